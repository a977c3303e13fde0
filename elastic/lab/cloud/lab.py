"""LabCloud: the emulator's public face. Owns the clouds, the HTTP server, the lifecycle ticker
and the hook runner; everything tests and the CLI need goes through here."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml

from elastic.lab.cloud import control
from elastic.lab.cloud.config import FlavorSpec, flavor_spec, parse_lab_config, quota_limits
from elastic.lab.cloud.faults import Faults
from elastic.lab.cloud.hooks import HookCallable, HookRunner
from elastic.lab.cloud.http_server import LabHTTPServer
from elastic.lab.cloud.messages import Response
from elastic.lab.cloud.nova_servers import addresses
from elastic.lab.cloud.requestlog import RequestLog
from elastic.lab.cloud.state import CloudState

TICK_SECONDS = 0.02


class LabCloud:
    def __init__(self, config: dict | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 on_active: HookCallable | None = None, on_deleted: HookCallable | None = None):
        if not host.startswith("127."):
            raise ValueError(f"the lab cloud binds loopback only, not {host}")
        configs = parse_lab_config(config)
        self.clouds: dict[str, CloudState] = {name: CloudState(cfg) for name, cfg in configs.items()}
        self.log = RequestLog()
        self.stopping = threading.Event()
        self._address = (host, port)
        self._hooks = HookRunner({"on_active": on_active, "on_deleted": on_deleted},
                                 {name: cfg.hooks for name, cfg in configs.items()},
                                 {name: cfg.hook_timeout_seconds for name, cfg in configs.items()})
        for state in self.clouds.values():
            state.listener = self._hooks.submit
        self._http: LabHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- running -----------------------------------------------------------------------------

    def start(self) -> LabCloud:
        if self._http is not None:
            raise RuntimeError("this LabCloud is already started")
        self._http = LabHTTPServer(self._address, self)
        self._hooks.start()
        self._threads = [threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                          name="lab-cloud-serve", daemon=True),
                         threading.Thread(target=self._tick, name="lab-cloud-ticker", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        if self._http is None or self.stopping.is_set():
            return
        self.stopping.set()
        for cloud in self.clouds.values():
            cloud.gate.release()  # requests held by an outage end now, not when their hold runs out
        self._http.shutdown()
        self._http.server_close()
        self._http.close_connections()
        for thread in self._threads:
            thread.join()
        self._hooks.stop()

    def __enter__(self) -> LabCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick(self) -> None:
        while not self.stopping.wait(TICK_SECONDS):
            for cloud in self.clouds.values():
                cloud.settle()

    def wait_for_hooks(self, timeout: float = 10.0) -> bool:
        """True once every hook fired so far has finished (for tests)."""
        return self._hooks.wait_idle(timeout)

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._http is None:
            raise RuntimeError("start the LabCloud first")
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def auth_url(self, cloud: str) -> str:
        self._cloud(cloud)
        return f"{self.url}/{cloud}/identity/v3"

    def write_clouds_yaml(self, path: str | Path, clouds: list[str] | None = None) -> Path:
        entries = {}
        for name in clouds or list(self.clouds):
            auth = self._cloud(name).config.auth
            entries[name] = {"auth": {"auth_url": self.auth_url(name), **auth}, "auth_type": "password",
                             "region_name": self._cloud(name).config.region, "identity_api_version": 3,
                             "interface": "public"}
        path = Path(path)
        path.write_text(yaml.safe_dump({"clouds": entries}, sort_keys=False))
        return path

    # ---- the world ---------------------------------------------------------------------------

    def _cloud(self, name: str) -> CloudState:
        try:
            return self.clouds[name]
        except KeyError:
            raise KeyError(f"no cloud named {name!r} (clouds: {', '.join(self.clouds)})") from None

    def servers(self, cloud: str) -> list[dict[str, Any]]:
        state = self._cloud(cloud)
        with state.lock:
            return [{
                "id": s.id, "name": s.name, "status": s.status, "task_state": s.task_state, "vm_state": s.vm_state,
                "metadata": dict(s.metadata), "addresses": addresses(state, s), "flavor": s.flavor.name,
                "image": s.image.name if s.image else None, "key_name": s.key_name, "user_data": s.user_data,
                "created": s.created, "locked": s.locked, "fault": dict(s.fault) if s.fault else None,
                "host": s.host,
            } for s in sorted(state.servers.values(), key=lambda s: (s.created, s.id))]

    def server_groups(self, cloud: str) -> list[dict[str, Any]]:
        """The cloud's server groups, oldest first: id, name, policy, rules, members (server ids)."""
        state = self._cloud(cloud)
        with state.lock:
            return [{"id": g.id, "name": g.name, "policy": g.policy, "rules": dict(g.rules), "members": list(g.members)}
                    for g in state.list_server_groups()]

    def seed_server(self, cloud: str, name: str, *, metadata: dict[str, str] | None = None, status: str = "ACTIVE",
                    flavor: str | None = None, image: str | None = None, age_seconds: float = 0) -> str:
        return self._cloud(cloud).seed_server(name, metadata=metadata, status=status, flavor=flavor, image=image,
                                              age_seconds=age_seconds)

    def floating_ips(self, cloud: str) -> list[dict[str, Any]]:
        """The cloud's floating IPs, oldest first: id, address, description, port_id, server (its port's device)."""
        state = self._cloud(cloud)
        with state.lock:
            found = []
            for fip in sorted(state.floating_ips.values(), key=lambda f: (f.created, f.id)):
                port = state.ports.get(fip.port_id) if fip.port_id else None
                found.append({"id": fip.id, "address": fip.address, "description": fip.description,
                              "port_id": fip.port_id, "server": port.device_id if port else None,
                              "created": fip.created})
            return found

    def seed_floating_ip(self, cloud: str, network: str, *, description: str = "", server: str | None = None,
                         age_seconds: float = 0) -> str:
        """A floating IP made behind the product's back (a human's, another cluster's, an old run's) on the
        external network named `network`, on the first port of server id `server` or unattached; its id."""
        state = self._cloud(cloud)
        with state.lock:
            net_id = next((n.id for n in state.networks.values() if n.name == network), network)
            port_id = state.server_ports(server)[0].id if server else None
            fip = state.create_floating_ip(net_id, port_id, description)
            fip.created -= age_seconds
            return fip.id

    def set_faults(self, cloud: str, **faults: Any) -> dict[str, Any]:
        state = self._cloud(cloud)
        with state.lock:
            state.apply_faults(state.gate.faults.merged(faults, where=f"faults of {cloud}"))
            return state.gate.faults.as_dict()

    def clear_faults(self, cloud: str) -> None:
        self._cloud(cloud).apply_faults(Faults())

    def expire_credentials(self, cloud: str) -> None:
        """The cloud's credentials stop working mid-run: every token it issued is revoked and Keystone
        answers each authentication with 401 until restore_credentials() (the fault auth_fails)."""
        self.set_faults(cloud, auth_fails=True)

    def restore_credentials(self, cloud: str) -> None:
        """Authentication works again; the tokens revoked by expire_credentials() stay revoked."""
        self.set_faults(cloud, auth_fails=False)

    def revoke_tokens(self, cloud: str) -> int:
        """Revoke every token of the cloud (services answer 401); new authentication still works, so
        keystoneauth re-authenticates transparently. Returns how many were revoked."""
        return self._cloud(cloud).revoke_tokens()

    def faults(self, cloud: str) -> dict[str, Any]:
        return self._cloud(cloud).gate.faults.as_dict()

    def set_quota(self, cloud: str, **limits: int) -> None:
        state = self._cloud(cloud)
        checked = quota_limits(limits, f"quotas of {cloud}")
        with state.lock:
            state.quotas.update(checked)

    def set_timing(self, cloud: str, *, boot_seconds: float | None = None, delete_seconds: float | None = None) -> None:
        """How long boots and deletes take from now on (slow deletes: a larger delete_seconds)."""
        state = self._cloud(cloud)
        for name, value in (("boot_seconds", boot_seconds), ("delete_seconds", delete_seconds)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} of {cloud}: {value!r} must be a number of seconds >= 0")
        with state.lock:
            if boot_seconds is not None:
                state.config.boot_seconds = float(boot_seconds)
            if delete_seconds is not None:
                state.config.delete_seconds = float(delete_seconds)

    def add_image(self, cloud: str, name: str) -> str:
        return self._cloud(cloud).add_image(name)

    def remove_image(self, cloud: str, name: str) -> None:
        state = self._cloud(cloud)
        state.remove_by_name(state.images, name, "image")

    def add_flavor(self, cloud: str, name: str, vcpus: int, ram: int, disk: int) -> str:
        spec: FlavorSpec = flavor_spec({"name": name, "vcpus": vcpus, "ram": ram, "disk": disk}, f"flavor {name}")
        return self._cloud(cloud).add_flavor(spec)

    def remove_flavor(self, cloud: str, name: str) -> None:
        state = self._cloud(cloud)
        state.remove_by_name(state.flavors, name, "flavor")

    # ---- the request log ---------------------------------------------------------------------

    def requests(self, cloud: str | None = None) -> list[dict[str, Any]]:
        return self.log.records(cloud)

    def request_counts(self, cloud: str | None = None) -> dict[str, int]:
        return self.log.counts(cloud)

    def reset_requests(self) -> None:
        self.log.reset()

    def control(self, method: str, path: str, query: str, body: bytes) -> Response:
        return control.handle(self, method, path, query, body)
