"""Every configured cloud as one: find, poll and delete our servers across clouds.

Sites list a second cloud to survive the first one's bad day, so one cloud's trouble must stay
that cloud's. Here each cloud is asked in its own thread (a slow or dead cloud costs its own time,
not the others'), and each cloud's failure comes back as data (`Sighting.unseen`) for the flows to
scope to the nodes whose pools use that cloud.

Each cloud sits behind a `CloudGuard`, a circuit breaker over the run and over runs: a cloud that
gives no answer (refused twice, or no reply within api_timeout) is not asked again in this run,
and is written down in the state dir; the next runs probe it once with `probe_timeout` instead of
paying api_timeout and retries again, and go back to normal as soon as it answers. A cloud whose
credentials are refused is not asked again in this run either (each call would only re-authenticate
and fail).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from structlog.typing import FilteringBoundLogger

from elastic.cloud import BootRequest, BootTarget, Cloud, Flavor, FloatingIp, Limits, Server, ServerGroup
from elastic.config import Config
from elastic.errors import CloudError, CloudErrorKind
from elastic.history import CloudDown
from elastic.pacing import poll_pause
from elastic.retry import ATTEMPTS, with_retries

T = TypeVar("T")

# Kinds after which this run stops asking a cloud: it would cost time and change nothing.
_STOP_ASKING = frozenset({CloudErrorKind.UNREACHABLE, CloudErrorKind.AUTH})


class HealthMemory(Protocol):
    def clouds_down(self) -> Mapping[str, CloudDown]: ...
    def mark_cloud_down(self, cloud: str, error: str, now: float) -> None: ...
    def mark_cloud_up(self, cloud: str) -> None: ...


class CloudGuard:
    """A Cloud that stops asking a dead cloud for the rest of the run (see the module doc)."""

    def __init__(self, cloud: Cloud, memory: HealthMemory, *, down_since: float | None, probe_timeout: float,
                 clock: Callable[[], float], log: FilteringBoundLogger):
        self.name = cloud.name
        self._cloud = cloud
        self._memory = memory
        self._suspect = down_since is not None  # an earlier run found it dead: probe first
        self._probe_timeout = probe_timeout
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._stopped: CloudError | None = None
        self._refused_in_a_row = 0

    @property
    def stopped(self) -> CloudError | None:
        """Why this run no longer asks the cloud, or None."""
        return self._stopped

    # ---- the Cloud interface -------------------------------------------------------------------

    def list_servers(self, cluster: str, names: Collection[str] | None = None) -> list[Server]:
        return self._call(lambda: self._cloud.list_servers(cluster, names))

    def create_server(self, request: BootRequest) -> Server:
        return self._call(lambda: self._cloud.create_server(request))

    def delete_server(self, server_id: str) -> None:
        return self._call(lambda: self._cloud.delete_server(server_id))

    def resolve_boot(self, flavor: str, image: str, network: str, fresh: bool = False) -> BootTarget:
        return self._call(lambda: self._cloud.resolve_boot(flavor, image, network, fresh))

    def attach_floating_ip(self, server: Server, external_network: str) -> str:
        return self._call(lambda: self._cloud.attach_floating_ip(server, external_network))

    def release_floating_ips(self, server_id: str) -> None:
        return self._call(lambda: self._cloud.release_floating_ips(server_id))

    def list_floating_ips(self, cluster: str) -> list[FloatingIp]:
        return self._call(lambda: self._cloud.list_floating_ips(cluster))

    def delete_floating_ip(self, ip_id: str) -> None:
        return self._call(lambda: self._cloud.delete_floating_ip(ip_id))

    def flavor(self, name: str) -> Flavor:
        return self._call(lambda: self._cloud.flavor(name))

    def find_keypair(self, name: str) -> None:
        return self._call(lambda: self._cloud.find_keypair(name))

    def limits(self) -> Limits:
        return self._call(lambda: self._cloud.limits())

    def create_server_group(self, name: str, policy: str) -> ServerGroup:
        return self._call(lambda: self._cloud.create_server_group(name, policy))

    def list_server_groups(self) -> list[ServerGroup]:
        return self._call(lambda: self._cloud.list_server_groups())

    def delete_server_group(self, group_id: str) -> None:
        return self._call(lambda: self._cloud.delete_server_group(group_id))

    def probe(self, timeout: float) -> None:
        return self._call(lambda: self._cloud.probe(timeout))

    # ---- the breaker -----------------------------------------------------------------------------

    def _call(self, call: Callable[[], T]) -> T:
        self._gate()
        try:
            result = call()
        except CloudError as error:
            self._failed(error)
            raise
        self._refused_in_a_row = 0
        return result

    def _gate(self) -> None:
        with self._lock:  # other threads wait here while the probe runs
            if self._stopped is not None:
                raise self._stopped
            if not self._suspect:
                return
            self._suspect = False
            try:
                self._cloud.probe(self._probe_timeout)
            except CloudError as error:
                if error.kind in _STOP_ASKING:
                    raise self._stop(error, probed=True) from None
                raise
            self._memory.mark_cloud_up(self.name)
            self._log.info("cloud.up", cloud=self.name)

    def _failed(self, error: CloudError) -> None:
        with self._lock:
            if error.kind is CloudErrorKind.UNREACHABLE and not error.final:
                self._refused_in_a_row += 1
                if self._refused_in_a_row < ATTEMPTS[CloudErrorKind.UNREACHABLE]:
                    return
            if error.kind in _STOP_ASKING and self._stopped is None:
                self._stop(error, probed=False)

    def _stop(self, error: CloudError, *, probed: bool) -> CloudError:
        """Stop asking the cloud for this run; returns the error every later call raises."""
        what = "probe failed" if probed else "stopped asking"
        stopped = CloudError(error.kind, f"{error.message} ({what}: not asked again in this run)",
                             cloud=self.name, status=error.status, final=True, resource=error.resource)
        self._stopped = stopped
        if error.kind is CloudErrorKind.UNREACHABLE:
            self._memory.mark_cloud_down(self.name, str(error), self._clock())
        self._log.warning("cloud.down", cloud=self.name, kind=error.kind.value, error=str(error), probe=probed)
        return stopped


@dataclass(frozen=True)
class Sighting:
    """What one look at the clouds found: our servers by node name, and the clouds not seen."""

    servers: Mapping[str, list[Server]]
    unseen: Mapping[str, CloudError]  # cloud -> why it could not be listed

    def of(self, node: str) -> list[Server]:
        return self.servers.get(node, [])


@dataclass
class Deletion:
    """What a delete pass did: servers gone or going, and the errors per server id."""

    accepted: list[Server] = field(default_factory=list)
    failed: dict[str, tuple[Server, CloudError]] = field(default_factory=dict)


class NoMemory:
    """A HealthMemory that remembers nothing (read-only admin views, tests)."""

    def clouds_down(self) -> Mapping[str, CloudDown]:
        return {}

    def mark_cloud_down(self, cloud: str, error: str, now: float) -> None:
        pass

    def mark_cloud_up(self, cloud: str) -> None:
        pass


class Fleet:
    """The configured clouds behind their guards, asked in parallel, one thread per cloud."""

    def __init__(self, config: Config, clouds: Mapping[str, Cloud], memory: HealthMemory, *,
                 log: FilteringBoundLogger, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.log = log
        self.clock = clock
        self.monotonic = monotonic  # only for the durations the logs show
        self.sleep = sleep
        down = memory.clouds_down()
        self.clouds: dict[str, CloudGuard] = {
            name: CloudGuard(cloud, memory, down_since=down[name]["since"] if name in down else None,
                             probe_timeout=config.clouds[name].probe_timeout if name in config.clouds else 10.0,
                             clock=clock, log=log)
            for name, cloud in clouds.items()
        }

    def scope(self, node: str) -> tuple[str, ...]:
        """The clouds a node's servers may be on: its pool's, or every cloud for a node in no pool
        (its pool was removed from the YAML). A fault of any other cloud is none of its business."""
        pool = self.config.pool_of(node)
        if pool is None:
            return tuple(self.clouds)
        return tuple(entry.cloud for entry in self.config.pools[pool].clouds if entry.cloud in self.clouds)

    def blind_spots(self, nodes: Iterable[str], sighting: Sighting) -> dict[str, list[str]]:
        """For each node, the clouds of its scope that were not seen: it may have a server there."""
        return {node: [c for c in self.scope(node) if c in sighting.unseen] for node in nodes}

    # ---- looking -------------------------------------------------------------------------------

    def find(self, nodes: Iterable[str] | None, also: Mapping[str, Iterable[str]] | None = None) -> Sighting:
        """Our servers named for `nodes`, one list (with retries) per cloud of their scopes; with
        `nodes` None, every server of ours on every cloud. `also`: {cloud: nodes} to look for on
        clouds outside their scopes (a server left on a cloud its pool no longer lists)."""
        names_by_cloud: dict[str, list[str] | None] = {}
        if nodes is None:
            names_by_cloud = dict.fromkeys(self.clouds)
        else:
            wanted: dict[str, list[str]] = {}
            for node in dict.fromkeys(nodes):
                for cloud in self.scope(node):
                    wanted.setdefault(cloud, []).append(node)
            for cloud, extra in (also or {}).items():
                if cloud in self.clouds:
                    names = wanted.setdefault(cloud, [])
                    names.extend(node for node in extra if node not in names)
            names_by_cloud = {cloud: names for cloud, names in wanted.items()}

        def list_on(cloud: str, names: list[str] | None) -> list[Server]:
            return with_retries(lambda: self.clouds[cloud].list_servers(self.config.cluster, names), sleep=self.sleep)

        results = self.each_cloud({cloud: functools.partial(list_on, cloud, names)
                                   for cloud, names in names_by_cloud.items()})
        servers: dict[str, list[Server]] = defaultdict(list)
        unseen: dict[str, CloudError] = {}
        for cloud, result in results.items():
            if isinstance(result, CloudError):
                unseen[cloud] = result
                self.log.warning("cloud.list", cloud=cloud, ok=False, kind=result.kind.value, error=str(result))
                continue
            for server in result:
                servers[server.name].append(server)
        return Sighting(dict(servers), unseen)

    def poll(self, names_by_cloud: Mapping[str, Collection[str]]) -> dict[str, list[Server] | CloudError]:
        """One list per cloud, no retries (the caller polls again); servers or the cloud's error."""
        return self.each_cloud({cloud: functools.partial(self.clouds[cloud].list_servers, self.config.cluster, names)
                                for cloud, names in names_by_cloud.items() if names})

    def each_cloud(self, calls: Mapping[str, Callable[[], T]]) -> dict[str, T | CloudError]:
        """Run one call per cloud, in parallel; a CloudError is returned as that cloud's result."""
        def run(item: tuple[str, Callable[[], T]]) -> tuple[str, T | CloudError]:
            cloud, call = item
            try:
                return cloud, call()
            except CloudError as error:
                return cloud, error

        if len(calls) <= 1:
            return dict(map(run, calls.items()))
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="cloud") as pool:
            return dict(pool.map(run, calls.items()))

    # ---- deleting ------------------------------------------------------------------------------

    def delete(self, servers: Sequence[Server], *, why: str) -> Deletion:
        """Delete servers (their floating IPs first), each cloud in its own bounded pool, clouds in
        parallel. Servers already being deleted count as accepted."""
        result = Deletion()
        by_cloud: dict[str, list[Server]] = defaultdict(list)
        for server in servers:
            if server.deleting:
                result.accepted.append(server)
            else:
                by_cloud[server.cloud].append(server)

        def delete_on(cloud: str) -> list[tuple[Server, CloudError | None]]:
            workers = max(1, min(self._max_parallel(cloud), len(by_cloud[cloud])))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"delete-{cloud}") as pool:
                return list(pool.map(lambda s: (s, self._delete_one(s, why)), by_cloud[cloud]))

        for outcome in self.each_cloud({cloud: functools.partial(delete_on, cloud) for cloud in by_cloud}).values():
            assert not isinstance(outcome, CloudError)  # delete_on returns errors per server
            for server, error in outcome:
                if error is None:
                    result.accepted.append(server)
                else:
                    result.failed[server.id] = (server, error)
        return result

    def _delete_one(self, server: Server, why: str) -> CloudError | None:
        cloud = self.clouds[server.cloud]
        started = self.monotonic()
        try:
            if self.may_hold_floating_ip(server):
                # Ask Neutron (by the server's ports): Nova's address cache may not show the IP yet.
                with_retries(lambda: cloud.release_floating_ips(server.id), sleep=self.sleep)
            with_retries(lambda: cloud.delete_server(server.id), sleep=self.sleep)
        except CloudError as error:
            self.log.error("cloud.delete", node=server.name, cloud=server.cloud, server=server.id, ok=False, why=why,
                           kind=error.kind.value, error=str(error), seconds=round(self.monotonic() - started, 3))
            return error
        self.log.info("cloud.delete", node=server.name, cloud=server.cloud, server=server.id, ok=True, why=why,
                      seconds=round(self.monotonic() - started, 3))
        return None

    def sweep_floating_ips(self, nodes_by_cloud: Mapping[str, Collection[str]], *, why: str) -> list[FloatingIp]:
        """Delete our detached floating IPs made for these nodes: one list per cloud. A release
        before the delete misses an IP that a resume attached meanwhile (resume attaches without
        the node's lock); once the server is gone, Neutron shows such an IP detached, and no flow
        ever takes a detached IP up again. Errors are logged only: `elastic reconcile` finds the rest."""
        def sweep(cloud: str) -> list[FloatingIp]:
            guard = self.clouds[cloud]
            mine = set(nodes_by_cloud[cloud])
            swept = []
            for ip in guard.list_floating_ips(self.config.cluster):
                if ip.detached and ip.node in mine:
                    guard.delete_floating_ip(ip.id)
                    self.log.info("cloud.delete_floating_ip", cloud=cloud, node=ip.node, ip=ip.address, id=ip.id,
                                  ok=True, why=why)
                    swept.append(ip)
            return swept

        deleted: list[FloatingIp] = []
        calls = {cloud: functools.partial(sweep, cloud) for cloud, nodes in nodes_by_cloud.items()
                 if nodes and cloud in self.clouds}
        for cloud, result in self.each_cloud(calls).items():
            if isinstance(result, CloudError):
                self.log.warning("cloud.sweep_floating_ips", cloud=cloud, ok=False, why=why, kind=result.kind.value,
                                 error=str(result))
            else:
                deleted += result
        return deleted

    def may_hold_floating_ip(self, server: Server) -> bool:
        """Does the server show a floating IP, or is its pool set to take one on its cloud?"""
        if server.floating_address():
            return True
        pool = self.config.pools.get(server.pool or "") if server.pool else None
        if pool is None:
            pool = self.config.pools.get(self.config.pool_of(server.name) or "")
        return pool is not None and any(e.cloud == server.cloud and e.floating_ip for e in pool.clouds)

    def _max_parallel(self, cloud: str) -> int:
        settings = self.config.clouds.get(cloud)
        return settings.max_parallel if settings else 8

    def wait_gone(self, servers: Sequence[Server], timeout: float) -> list[Server]:
        """Poll (one list per cloud) until the servers are gone; those still there after `timeout`.
        A server on a cloud that stops answering counts as still there."""
        remaining = {s.id: s for s in servers}
        unseen: list[Server] = []
        deadline = self.clock() + timeout
        while remaining:
            names: dict[str, set[str]] = defaultdict(set)
            for server in remaining.values():
                names[server.cloud].add(server.name)
            listed = self.monotonic()
            results = self.poll(names)
            list_seconds = self.monotonic() - listed
            for cloud, result in results.items():
                if isinstance(result, CloudError):
                    self.log.warning("cloud.list", cloud=cloud, ok=False, error=str(result))
                    if self.clouds[cloud].stopped is not None:
                        unseen += [remaining.pop(i) for i, s in list(remaining.items()) if s.cloud == cloud]
                    continue
                present = {s.id for s in result}
                for server_id in [i for i, s in remaining.items() if s.cloud == cloud and i not in present]:
                    remaining.pop(server_id)
            if not remaining or self.clock() >= deadline:
                break
            fixed = self.config.timeouts.poll
            # A delete takes a second or two: look twice as often as for a boot.
            self.sleep(poll_pause(self.clock(), first_created=None, expected_boot=None, list_seconds=list_seconds,
                                  fixed=None if fixed is None else min(fixed, 1.0), seen_within=0.5))
        return unseen + list(remaining.values())
