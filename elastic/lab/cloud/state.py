"""The world of one emulated cloud: its catalogue (flavors, images, networks, keypairs), servers
and their lifecycle, ports, floating IPs, quotas and tokens. HTTP-free: services translate the
exceptions below into each API's own error shape. All methods take the cloud's lock."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from elastic.lab.cloud.config import CloudSpec, FlavorSpec
from elastic.lab.cloud.faults import FaultGate, Faults
from elastic.lab.cloud.model import (
    BootSpec,
    EmulatedServer,
    Flavor,
    FloatingIp,
    HookEvent,
    Image,
    Network,
    Port,
    ServerGroup,
    Subnet,
    Token,
    new_id,
    stable_id,
)

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."


class NotFound(Exception):
    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {ident} not found")
        self.kind, self.ident = kind, ident


class Conflict(Exception):
    pass


class Invalid(Exception):
    pass


class OverLimit(Exception):
    """A quota Nova reports without numbers: too many server groups, too many servers in a group."""


class QuotaExceeded(Exception):
    """Nova's counting-quota failure: each field lists the exceeded resources in sorted order."""

    def __init__(self, overs: list[str], requested: list[int], used: list[int], allowed: list[int]):
        self.overs, self.requested, self.used, self.allowed = overs, requested, used, allowed
        super().__init__(self.message)

    @property
    def message(self) -> str:
        def join(values):
            return ", ".join(str(v) for v in values)
        return (f"Quota exceeded for {join(self.overs)}: Requested {join(self.requested)}, "
                f"but already used {join(self.used)} of {join(self.allowed)} {join(self.overs)}")

    @property
    def legacy_message(self) -> str:
        """Pre-Juno Nova's TooManyInstances: every exceeded resource named, the numbers of the first."""
        return (f"Quota exceeded for {','.join(self.overs)}: Requested {self.requested[0]}, "
                f"but already used {self.used[0]} of {self.allowed[0]} {self.overs[0]}")


class CloudState:
    def __init__(self, config: CloudSpec, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.lock = threading.RLock()
        self.config = config
        self.name = config.name
        self.gate = FaultGate(config.faults)
        self._clock, self._monotonic = clock, monotonic
        self.project_id = stable_id(self.name, "project").replace("-", "")
        self.user_id = stable_id(self.name, "user").replace("-", "")
        self.quotas = dict(config.quotas)
        self.tokens: dict[str, Token] = {}
        self.flavors: dict[str, Flavor] = {}
        self.images: dict[str, Image] = {}
        self.networks: dict[str, Network] = {}
        self.ports: dict[str, Port] = {}
        self.ports_by_device: dict[str, list[Port]] = {}
        self.floating_ips: dict[str, FloatingIp] = {}
        self.servers: dict[str, EmulatedServer] = {}
        # Deleted servers' sort keys (created, id): Nova soft-deletes, and still finds a deleted
        # server as a list's marker until its rows are archived (InstanceLister.get_marker_record
        # reads with read_deleted='yes').
        self.deleted_servers: dict[str, tuple[Any, str]] = {}
        self.server_groups: dict[str, ServerGroup] = {}
        self.hosts = [f"{self.name}-compute-{i}" for i in range(1, config.hosts + 1)]
        self.keypairs = {name: _public_key(self.name, name) for name in config.keypairs}
        self.security_groups = {name: stable_id(self.name, "secgroup", name) for name in config.security_groups}
        self._macs = 0
        self._due: list[tuple[float, int, str]] = []  # (monotonic deadline, tie-break, server id)
        self._serial = itertools.count()
        self._stalled: list[str] = []  # due to boot while stuck_in_build was set
        self.listener: Callable[[list[HookEvent]], None] | None = None
        for spec in config.flavors:
            self.add_flavor(spec)
        for name in config.images:
            self.add_image(name)
        for net in config.networks:
            net_id = stable_id(self.name, "network", net.name)
            subnet = Subnet(stable_id(self.name, "subnet", net.name), net_id, net.cidr)
            self.networks[net_id] = Network(net_id, net.name, net.external, subnet)

    def now(self) -> float:
        return self._clock()

    # ---- tokens ----------------------------------------------------------------------------

    def issue_token(self, methods: list[str], application_credential: dict[str, str] | None = None) -> Token | None:
        """A new token, or None while the fault auth_fails refuses every authentication."""
        with self.lock:
            if self.gate.faults.auth_fails:
                return None
            now = self.now()
            for stale in [t for t in self.tokens.values() if t.expires <= now]:
                del self.tokens[stale.id]
            token = Token("gAAAA" + secrets.token_urlsafe(32), now, now + self.config.token_ttl_seconds, methods,
                          application_credential)
            self.tokens[token.id] = token
            return token

    def token_valid(self, token_id: str | None) -> bool:
        with self.lock:
            token = self.tokens.get(token_id or "")
            return token is not None and token.expires > self.now() and not self.gate.faults.auth_fails

    def revoke_tokens(self) -> int:
        """Every token issued so far is invalid from now on (a password change, a revocation event)."""
        with self.lock:
            count = len(self.tokens)
            self.tokens.clear()
            return count

    def apply_faults(self, faults: Faults) -> None:
        """Replace the faults; auth_fails turning on revokes every token, as when the credential
        behind them expires or its password changes."""
        with self.lock:
            if faults.auth_fails and not self.gate.faults.auth_fails:
                self.tokens.clear()
            self.gate.replace(faults)

    # ---- catalogue -------------------------------------------------------------------------

    def add_flavor(self, spec: FlavorSpec) -> str:
        with self.lock:
            if any(f.name == spec.name for f in self.flavors.values()):
                raise Conflict(f"Flavor with name {spec.name} already exists.")
            flavor = Flavor(stable_id(self.name, "flavor", spec.name), spec.name, spec.vcpus, spec.ram, spec.disk)
            self.flavors[flavor.id] = flavor
            return flavor.id

    def add_image(self, name: str) -> str:
        with self.lock:
            # Glance allows two images with one name; the second gets a fresh id.
            taken = any(i.name == name for i in self.images.values())
            image_id = new_id() if taken else stable_id(self.name, "image", name)
            self.images[image_id] = Image(image_id, name, self.now())
            return image_id

    def remove_by_name(self, table: dict[str, Any], name: str, kind: str) -> None:
        with self.lock:
            doomed = [key for key, item in table.items() if item.name == name]
            if not doomed:
                raise NotFound(kind, name)
            for key in doomed:
                del table[key]

    def find_flavor(self, ref: str) -> Flavor:
        flavor = self.flavors.get(ref.rstrip("/").rsplit("/", 1)[-1])
        if flavor is None:
            raise NotFound("flavor", ref)
        return flavor

    # ---- servers ---------------------------------------------------------------------------

    def usage(self) -> dict[str, int]:
        with self.lock:
            servers = list(self.servers.values())
            return {"instances": len(servers), "cores": sum(s.flavor.vcpus for s in servers),
                    "ram": sum(s.flavor.ram for s in servers), "floating_ips": len(self.floating_ips),
                    "server_groups": len(self.server_groups)}

    def create_server(self, spec: BootSpec) -> EmulatedServer:
        """Nova's order: references and the hinted server group (400), then quota (403), the
        group's member quota (403); then the server is in BUILD, on the host the scheduler chose
        (or, when no host passes, about to turn ERROR with "No valid host was found")."""
        with self.lock:
            try:
                flavor = self.find_flavor(spec.flavor_ref)
            except NotFound:
                raise Invalid("Invalid flavorRef provided.") from None
            image = None
            if spec.image_ref:
                image = self.images.get(spec.image_ref.rstrip("/").rsplit("/", 1)[-1])
                if image is None:
                    raise Invalid("Can not find requested image")
            network_ids = self._requested_networks(spec.networks)
            if spec.key_name is not None and spec.key_name not in self.keypairs:
                raise Invalid("Invalid key_name provided.")
            for group in spec.security_groups:
                if group not in self.security_groups and group not in self.security_groups.values():
                    raise Invalid(f"Security group {group} not found for project {self.project_id}.")
            group = None
            if spec.group is not None:
                group = self.server_groups.get(spec.group)
                if group is None:
                    # nova.compute.api looks the hint up before any quota check: InstanceGroupNotFound, a 400.
                    raise Invalid(f"Instance group {spec.group} could not be found.")
            self._check_quota(flavor)
            if group is not None:
                limit = self.quotas.get("server_group_members", -1)
                if limit >= 0 and len(group.members) + 1 > limit:
                    raise OverLimit("Quota exceeded, too many servers in group")
            now, mono = self.now(), self._monotonic()
            server = EmulatedServer(
                id=new_id(), name=spec.name, flavor=Flavor(**vars(flavor)), image=image, metadata=dict(spec.metadata),
                created=now, updated=now, network_ids=network_ids, key_name=spec.key_name,
                security_groups=list(spec.security_groups), user_data=spec.user_data,
                availability_zone=spec.availability_zone or "nova", config_drive="True" if spec.config_drive else "",
                description=spec.description, tags=list(spec.tags), ready_at=mono + self.config.boot_seconds)
            server.host = self._place(group)
            self.servers[server.id] = server
            if group is not None:
                group.members.append(server.id)
            # A server no host can take fails as soon as the scheduler answers, long before a boot would end.
            self._schedule(server.ready_at if server.host is not None else mono, server.id)
            return server

    def _requested_networks(self, requested: list[dict[str, str]] | str | None) -> list[str]:
        if requested == "none":
            return []
        if requested is None or requested == "auto":
            # Without a choice Nova attaches the project's one usable network.
            return [n.id for n in self.networks.values() if not n.external][:1]
        ids = []
        for entry in requested:
            if "port" in entry:
                raise Invalid("Booting with a pre-created port is not supported by this emulator")
            net_id = entry.get("uuid", "")
            if net_id not in self.networks:
                raise Invalid(f"Network {net_id} could not be found.")
            ids.append(net_id)
        return ids

    def _place(self, group: ServerGroup | None) -> str | None:
        """The scheduler: the hosts with room (host_capacity servers each), filtered by the group's
        hard policy (affinity: the host its members are on; anti-affinity: a host with fewer than
        max_server_per_host of them, 1 by default), then weighed: a soft policy prefers the hosts
        with the most (soft-affinity) or fewest (soft-anti-affinity) members, and otherwise the
        emptiest host wins (Nova's default RAM weigher spreads). None: no valid host."""
        load = dict.fromkeys(self.hosts, 0)
        for server in self.servers.values():
            if server.host in load:
                load[server.host] += 1
        capacity = self.config.host_capacity
        candidates = [h for h in self.hosts if capacity < 0 or load[h] < capacity]
        on_host = dict.fromkeys(self.hosts, 0)
        policy = group.policy if group is not None else None
        if group is not None:
            for member in group.members:
                host = self.servers[member].host if member in self.servers else None
                if host in on_host:
                    on_host[host] += 1
        if policy == "affinity" and any(on_host.values()):
            candidates = [h for h in candidates if on_host[h]]
        elif policy == "anti-affinity":
            most = group.rules.get("max_server_per_host", 1) if group is not None else 1
            candidates = [h for h in candidates if on_host[h] < most]
        if not candidates:
            return None
        sign = {"soft-affinity": -1, "soft-anti-affinity": 1}.get(policy or "", 0)
        return min(candidates, key=lambda h: (sign * on_host[h], load[h], self.hosts.index(h)))

    def _check_quota(self, flavor: Flavor) -> None:
        used = self.usage()
        wanted = {"cores": flavor.vcpus, "instances": 1, "ram": flavor.ram}
        overs = [key for key in sorted(wanted)
                 if self.quotas.get(key, -1) >= 0 and used[key] + wanted[key] > self.quotas[key]]
        if overs:
            raise QuotaExceeded(overs, [wanted[k] for k in overs], [used[k] for k in overs],
                                [self.quotas[k] for k in overs])

    def seed_server(self, name: str, *, metadata: dict[str, str] | None, status: str, flavor: str | None,
                    image: str | None, age_seconds: float) -> str:
        with self.lock:
            flavor_obj = next((f for f in self.flavors.values() if f.name == flavor or flavor is None), None)
            if flavor_obj is None:
                raise NotFound("flavor", str(flavor))
            image_obj = next((i for i in self.images.values() if i.name == image or image is None), None)
            if image is not None and image_obj is None:
                raise NotFound("image", image)
            created = self.now() - age_seconds
            server = EmulatedServer(new_id(), name, Flavor(**vars(flavor_obj)), image_obj, dict(metadata or {}),
                                    created, created,
                            self._requested_networks(None), ready_at=self._monotonic() + self.config.boot_seconds)
            if status not in ("ACTIVE", "BUILD", "ERROR"):
                raise Invalid(f"seed status must be ACTIVE, BUILD or ERROR, not {status!r}")
            # A seeded server was placed behind our back: on a host with room, else the emptiest.
            server.host = self._place(None) or min(
                self.hosts, key=lambda h: sum(s.host == h for s in self.servers.values()))
            self.servers[server.id] = server
            if status == "ACTIVE":
                self._activate(server)
            elif status == "ERROR":
                self._fail(server, NO_VALID_HOST)
            else:
                self._schedule(server.ready_at, server.id)
            return server.id

    def get_server(self, server_id: str) -> EmulatedServer:
        with self.lock:
            server = self.servers.get(server_id)
            if server is None:
                raise NotFound("server", server_id)
            return server

    def list_servers(self) -> list[EmulatedServer]:
        """Nova's default order: newest first, then by id."""
        with self.lock:
            return sorted(self.servers.values(), key=lambda s: (s.created, s.id), reverse=True)

    def delete_server(self, server_id: str) -> None:
        with self.lock:
            server = self.get_server(server_id)
            if server.locked:
                raise Conflict(f"Instance {server_id} is locked")
            if server.task_state == "deleting":
                return
            server.task_state = "deleting"
            server.updated = self.now()
            server.gone_at = self._monotonic() + self.config.delete_seconds
            self._schedule(server.gone_at, server.id)

    def set_locked(self, server_id: str, locked: bool) -> None:
        with self.lock:
            self.get_server(server_id).locked = locked

    def _schedule(self, deadline: float, server_id: str) -> None:
        heapq.heappush(self._due, (deadline, next(self._serial), server_id))

    def settle(self) -> None:
        """Move servers whose deadline passed along their lifecycle, and hand the hooks to fire to
        the listener. Runs on the ticker and before every request, so no read sees a stale state."""
        with self.lock:
            if not self._due and not self._stalled:
                return
            events = self._advance()
            if events and self.listener is not None:
                self.listener(events)  # under the lock, so hooks keep the lifecycle's order

    def _advance(self) -> list[HookEvent]:
        events = []
        mono = self._monotonic()
        stuck = self.gate.faults.stuck_in_build
        if self._stalled and not stuck:
            for server_id in self._stalled:
                self._schedule(mono, server_id)
            self._stalled.clear()
        while self._due and self._due[0][0] <= mono:
            _, _, server_id = heapq.heappop(self._due)
            server = self.servers.get(server_id)
            if server is None:
                continue
            if server.gone_at is not None:
                if mono >= server.gone_at:
                    if server.status == "ACTIVE":
                        events.append(HookEvent("on_deleted", self.name, server.name, server.id, server.first_address))
                    self._remove(server)
            elif server.status == "BUILD":
                if server.host is None:
                    self._fail(server, NO_VALID_HOST)
                elif stuck:
                    self._stalled.append(server_id)
                elif self.gate.boot_fails(server.flavor.name):
                    self._fail(server, NO_VALID_HOST)
                elif self._activate(server):
                    events.append(HookEvent("on_active", self.name, server.name, server.id, server.first_address))
        return events

    def _activate(self, server: EmulatedServer) -> bool:
        for net_id in server.network_ids:
            network = self.networks.get(net_id)
            address = network.subnet.allocate() if network else None
            if network is None or address is None:
                self._fail(server, f"Build of instance {server.id} aborted: Failed to allocate the network(s), "
                                   "not rescheduling.")
                return False
            self._macs += 1
            port = Port(new_id(), net_id, network.subnet.id, server.id, _mac(self.name, self._macs), address,
                        self.now())
            self.ports[port.id] = port
            self.ports_by_device.setdefault(server.id, []).append(port)
            server.first_address = server.first_address or address
        server.status, server.vm_state, server.task_state, server.power_state = "ACTIVE", "active", None, 1
        server.launched_at = server.updated = self.now()
        return True

    def _fail(self, server: EmulatedServer, message: str) -> None:
        for port in self.ports_by_device.pop(server.id, []):
            self._drop_port(port)
        server.first_address = ""
        server.host = None  # Nova nils an instance's host and node when its build fails
        server.status, server.vm_state, server.task_state, server.power_state = "ERROR", "error", None, 0
        server.updated = self.now()
        server.fault = {"code": 500, "created": server.updated, "message": message}

    def _remove(self, server: EmulatedServer) -> None:
        for port in self.ports_by_device.pop(server.id, []):
            self._drop_port(port)
        del self.servers[server.id]
        self.deleted_servers[server.id] = (server.created, server.id)
        # A group shows only members that are not deleted.
        for group in self.server_groups.values():
            if server.id in group.members:
                group.members.remove(server.id)

    def _drop_port(self, port: Port) -> None:
        # Neutron keeps the floating IP allocated, only disassociated, when its port goes away.
        for fip in self.floating_ips.values():
            if fip.port_id == port.id:
                fip.port_id = fip.fixed_ip = fip.associated_at = None
        self.networks[port.network_id].subnet.release(port.ip)
        del self.ports[port.id]

    def server_ports(self, server_id: str) -> list[Port]:
        return list(self.ports_by_device.get(server_id, []))

    def host_id(self, server: EmulatedServer) -> str:
        """Nova's hostId: sha224 of project id and host name, "" while the server has no host."""
        if server.host is None:
            return ""
        return hashlib.sha224(f"{self.project_id}{server.host}".encode()).hexdigest()

    # ---- server groups ---------------------------------------------------------------------

    def create_server_group(self, name: str, policy: str, rules: dict[str, int]) -> ServerGroup:
        """Nova's order: the quota (403), then whether the policy takes rules (400)."""
        with self.lock:
            limit = self.quotas.get("server_groups", -1)
            if limit >= 0 and len(self.server_groups) + 1 > limit:
                raise OverLimit("Quota exceeded, too many server groups.")
            if policy != "anti-affinity" and rules:
                raise Invalid("Only anti-affinity policy supports rules.")
            group = ServerGroup(new_id(), name, policy, dict(rules), self.now())
            self.server_groups[group.id] = group
            return group

    def get_server_group(self, group_id: str) -> ServerGroup:
        with self.lock:
            group = self.server_groups.get(group_id)
            if group is None:
                raise NotFound("server group", group_id)
            return group

    def list_server_groups(self) -> list[ServerGroup]:
        with self.lock:
            return sorted(self.server_groups.values(), key=lambda g: (g.created, g.id))

    def delete_server_group(self, group_id: str) -> None:
        """Nova deletes a group that still has members: they keep running, in no group."""
        with self.lock:
            if self.server_groups.pop(group_id, None) is None:
                raise NotFound("server group", group_id)

    # ---- floating IPs ----------------------------------------------------------------------

    def create_floating_ip(self, network_id: str, port_id: str | None, description: str = "") -> FloatingIp:
        with self.lock:
            network = self.networks.get(network_id)
            if network is None:
                raise NotFound("network", network_id)
            if not network.external:
                raise Invalid(f"Bad floatingip request: Network {network_id} is not a valid external network.")
            limit = self.quotas.get("floating_ips", -1)
            if limit >= 0 and len(self.floating_ips) >= limit:
                raise QuotaExceeded(["floatingip"], [1], [len(self.floating_ips)], [limit])
            address = network.subnet.allocate()
            if address is None:
                raise Conflict(f"No more IP addresses available on network {network_id}.")
            fip = FloatingIp(new_id(), address, network_id, self.now(), description=description)
            self.floating_ips[fip.id] = fip
            if port_id:
                try:
                    self.associate(fip.id, port_id)
                except Exception:
                    self.delete_floating_ip(fip.id)
                    raise
            return fip

    def associate(self, fip_id: str, port_id: str | None) -> FloatingIp:
        with self.lock:
            fip = self.floating_ips.get(fip_id)
            if fip is None:
                raise NotFound("floatingip", fip_id)
            if port_id is None:
                fip.port_id = fip.fixed_ip = fip.associated_at = None
                return fip
            port = self.ports.get(port_id)
            if port is None:
                raise NotFound("port", port_id)
            other = next((f for f in self.floating_ips.values() if f.port_id == port_id and f.id != fip_id), None)
            if other is not None:
                raise Conflict(f"Cannot associate floating IP {fip.address} ({fip.id}) with port {port_id} using fixed "
                               f"IP {port.ip}, as that fixed IP already has a floating IP on external network "
                               f"{other.network_id}.")
            if fip.port_id != port.id:
                fip.associated_at = self._monotonic()
            fip.port_id, fip.fixed_ip = port.id, port.ip
            return fip

    def describe_floating_ip(self, fip_id: str, description: str) -> FloatingIp:
        with self.lock:
            fip = self.floating_ips.get(fip_id)
            if fip is None:
                raise NotFound("floatingip", fip_id)
            fip.description = description
            return fip

    def delete_floating_ip(self, fip_id: str) -> None:
        with self.lock:
            fip = self.floating_ips.pop(fip_id, None)
            if fip is None:
                raise NotFound("floatingip", fip_id)
            self.networks[fip.network_id].subnet.release(fip.address)

    def floating_ip_for_port(self, port_id: str) -> FloatingIp | None:
        return next((f for f in self.floating_ips.values() if f.port_id == port_id), None)

    def in_nova_cache(self, fip: FloatingIp) -> bool:
        """Does Nova's network info cache show this associated floating IP yet (floating_ip_cache_lag)?"""
        lag = self.gate.faults.floating_ip_cache_lag
        if lag is False:
            return True
        if lag is True or fip.associated_at is None:
            return False
        return self._monotonic() - fip.associated_at >= lag


def _mac(cloud: str, serial: int) -> str:
    tail = hashlib.sha1(f"{cloud}/{serial}".encode()).digest()[:3]
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in tail)


def _public_key(cloud: str, name: str) -> dict[str, str]:
    body = hashlib.sha256(f"{cloud}/{name}".encode()).hexdigest()
    digest = hashlib.md5(body.encode()).hexdigest()
    return {"public_key": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{body[:43]} {name}@lab",
            "fingerprint": ":".join(digest[i:i + 2] for i in range(0, 32, 2))}
