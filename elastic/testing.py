"""In-memory stand-ins for the flows' collaborators, shipped with the package (as structlog ships
`structlog.testing`) so unit tests exercise decisions without HTTP or scontrol.

`MemoryCloud` implements the same interface as `elastic.cloud.OpenStackCloud`; the HTTP emulator in
`elastic.lab.cloud` is what integration tests use instead.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from elastic.cloud import (
    ACTIVE,
    BUILDING,
    ERROR,
    SERVER_GROUP_POLICIES,
    Address,
    BootRequest,
    BootTarget,
    Flavor,
    FloatingIp,
    Limits,
    Server,
    ServerGroup,
    classify_fault,
    floating_ip_mark,
    floating_ip_owner,
    is_ours,
)
from elastic.config import META_CLUSTER
from elastic.errors import CloudError, CloudErrorKind
from elastic.history import CloudDown, PendingDelete, Problem, add_pending


@dataclass
class MemoryCloud:
    """A cloud whose servers live in a dict. Servers become ACTIVE (or ERROR) on the next list
    after `boot_polls` lists; failures are queued per operation with `fail_next`."""

    name: str
    boot_polls: int = 1
    network_prefix: str = "127.10.0."
    flavors: dict[str, Flavor] = field(default_factory=lambda: {"m1.small": Flavor("f1", "m1.small", 1, 2048, 20)})
    images: set[str] = field(default_factory=lambda: {"debian-12"})
    networks: set[str] = field(default_factory=lambda: {"private", "public"})
    keypairs: set[str] = field(default_factory=lambda: {"hpc"})
    instance_quota: int = 1000
    servers: dict[str, Server] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    error_on_boot: dict[str, str] = field(default_factory=dict)  # node name -> fault message
    stuck_in_build: set[str] = field(default_factory=set)  # node names whose servers never leave BUILD
    server_groups: dict[str, ServerGroup] = field(default_factory=dict)
    server_group_quota: int = 10  # Nova's defaults; -1: unlimited
    server_group_member_quota: int = 10
    # Floating IPs as Neutron holds them, by id; one whose server is gone stays, disassociated.
    floating_ips: dict[str, MemoryFloatingIp] = field(default_factory=dict)
    clock: Callable[[], float] = time.time  # floating IPs' created_at
    # kind ("flavor", "image", "network") -> an id that resolve_boot hands out as cached until a
    # fresh look-up; a create naming it is refused as Nova refuses a gone image (400).
    stale_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._polls: dict[str, int] = {}
        self._failures: dict[str, list[CloudError]] = {}
        self._lock = threading.Lock()
        self._refreshed = False  # a fresh resolve_boot replaced the stale ids

    # ---- test controls -----------------------------------------------------------------------

    def fail_next(self, operation: str, kind: CloudErrorKind, times: int = 1, message: str = "injected",
                  final: bool = False) -> None:
        """The next `times` calls of `operation` raise; `final` as for a call that got no answer in time."""
        self._failures.setdefault(operation, []).extend(
            CloudError(kind, message, cloud=self.name, final=final) for _ in range(times))

    def add(self, name: str, *, status: str = ACTIVE, metadata: Mapping[str, str] | None = None,
            created: float = 0.0, task_state: str | None = None) -> Server:
        with self._lock:
            server = Server(id=f"{self.name}-{next(self._ids)}", name=name, status=status, cloud=self.name,
                            metadata=dict(metadata or {}), created=created, task_state=task_state,
                            addresses=self._addresses(status),
                            fault_kind=classify_fault(None) if status == ERROR else None)
            self.servers[server.id] = server
            return server

    def add_floating_ip(self, *, description: str = "", server_id: str | None = None,
                        created: float | None = None) -> MemoryFloatingIp:
        """A floating IP made behind our back (a human's, another cluster's, an old run's)."""
        with self._lock:
            return self._new_floating_ip(description, server_id, created)

    def live(self) -> list[Server]:
        return [s for s in self.servers.values() if not s.deleting]

    # ---- the Cloud interface -------------------------------------------------------------------

    def list_servers(self, cluster: str, names: Collection[str] | None = None) -> list[Server]:
        self._record("list", ",".join(sorted(names)) if names is not None else "*")
        with self._lock:
            for server_id, server in list(self.servers.items()):
                if server.deleting:
                    del self.servers[server_id]  # gone by the next list (the emulator shows a deleting window)
                    self._leave_groups(server_id)  # Nova lists a member until its delete completes
                    self._drop_ports(server_id)
                elif server.status == BUILDING and server.name not in self.stuck_in_build:
                    self._polls[server_id] = self._polls.get(server_id, 0) + 1
                    if self._polls[server_id] >= self.boot_polls:
                        self.servers[server_id] = self._finish_boot(server)
            return [s for s in self.servers.values()
                    if is_ours(s.metadata, cluster) and (names is None or s.name in names)]

    def create_server(self, request: BootRequest) -> Server:
        self._record("create", request.name)
        with self._lock:
            # Nova's order: the hinted group (a 400 InstanceGroupNotFound), the instance quota, the
            # group's member quota.
            group = self.server_groups.get(request.server_group) if request.server_group is not None else None
            if request.server_group is not None and group is None:
                raise CloudError(CloudErrorKind.NOT_FOUND,
                                 f"create server {request.name}: Instance group {request.server_group} "
                                 "could not be found.", cloud=self.name, status=400,
                                 resource=("server group", request.server_group))
            for kind, stale in self.stale_ids.items():
                if stale in (request.flavor_id, request.image_id, request.network_id):
                    message = {"flavor": "Invalid flavorRef provided.", "image": "Can not find requested image",
                               "network": f"Network {stale} could not be found."}[kind]
                    raise CloudError(CloudErrorKind.CONFIG, f"create server {request.name}: {message}",
                                     cloud=self.name, status=400, resource=(kind, stale))
            if len([s for s in self.servers.values() if not s.deleting]) >= self.instance_quota:
                raise CloudError(CloudErrorKind.QUOTA, "Quota exceeded for instances", cloud=self.name, status=403)
            if group is not None and 0 <= self.server_group_member_quota <= len(group.members):
                raise CloudError(CloudErrorKind.QUOTA, f"create server {request.name}: Quota exceeded, too many "
                                 "servers in group", cloud=self.name, status=403)
            server = Server(id=f"{self.name}-{next(self._ids)}", name=request.name, status=BUILDING, cloud=self.name,
                            metadata=dict(request.metadata), created=float(next(self._ids)))
            self.servers[server.id] = server
            if group is not None:
                self.server_groups[group.id] = replace(group, members=(*group.members, server.id))
            return server

    def delete_server(self, server_id: str) -> None:
        self._record("delete", server_id)
        with self._lock:
            if server_id in self.servers:
                self.servers[server_id] = replace(self.servers[server_id], task_state="deleting")

    def resolve_boot(self, flavor: str, image: str, network: str, fresh: bool = False) -> BootTarget:
        self._record("resolve", f"{flavor}/{image}/{network}" + (" fresh" if fresh else ""))
        self._refreshed = self._refreshed or fresh
        if self.stale_ids and not self._refreshed:
            # What an earlier run looked up (the cross-run cache), since replaced on the cloud.
            ids = {"flavor": self.flavors[flavor].id if flavor in self.flavors else flavor, "image": image,
                   "network": network, **self.stale_ids}
            return BootTarget(flavor_id=ids["flavor"], image_id=ids["image"], network_id=ids["network"], cached=True)
        for what, name, known in (("flavor", flavor, self.flavors), ("image", image, self.images),
                                  ("network", network, self.networks)):
            if name not in known:
                raise CloudError(CloudErrorKind.NOT_FOUND, f"{what} {name!r} not found", cloud=self.name,
                                 resource=(what, name))
        return BootTarget(flavor_id=self.flavors[flavor].id, image_id=image, network_id=network)

    def attach_floating_ip(self, server: Server, external_network: str) -> str:
        self._record("attach_floating_ip", server.name)
        with self._lock:
            current = self.servers[server.id]
            existing = next((f for f in self.floating_ips.values() if f.server_id == server.id), None)
            if existing is not None:
                return existing.address
            cluster = current.metadata.get(META_CLUSTER)
            fip = self._new_floating_ip(floating_ip_mark(cluster, server.name) if cluster else "", server.id, None)
            floating: Address = {"addr": fip.address, "version": 4, "OS-EXT-IPS:type": "floating"}
            addresses = {**current.addresses, "private": [*current.addresses.get("private", []), floating]}
            self.servers[server.id] = replace(current, addresses=addresses)
            return fip.address

    def release_floating_ips(self, server_id: str) -> None:
        self._record("release_floating_ips", server_id)
        with self._lock:
            for fip in [f for f in self.floating_ips.values() if f.server_id == server_id]:
                del self.floating_ips[fip.id]

    def list_floating_ips(self, cluster: str) -> list[FloatingIp]:
        self._record("list_floating_ips", cluster)
        with self._lock:
            found = []
            for fip in self.floating_ips.values():
                owner = floating_ip_owner(fip.description)
                if owner is None or owner[0] != cluster:
                    continue
                port = f"port-{fip.server_id}" if fip.server_id else None
                found.append(FloatingIp(id=fip.id, address=fip.address, cloud=self.name, node=owner[1], port_id=port,
                                        server_id=fip.server_id, created=fip.created,
                                        status="ACTIVE" if port else "DOWN"))
            return found

    def delete_floating_ip(self, ip_id: str) -> None:
        self._record("delete_floating_ip", ip_id)
        with self._lock:
            self.floating_ips.pop(ip_id, None)

    def probe(self, timeout: float) -> None:
        self._record("probe", f"{timeout:g}")

    def flavor(self, name: str) -> Flavor:
        self._record("flavor", name)
        if name not in self.flavors:
            raise CloudError(CloudErrorKind.NOT_FOUND, f"flavor {name!r} not found", cloud=self.name,
                             resource=("flavor", name))
        return self.flavors[name]

    def find_keypair(self, name: str) -> None:
        self._record("find_keypair", name)
        if name not in self.keypairs:
            raise CloudError(CloudErrorKind.NOT_FOUND, f"key pair {name!r} not found", cloud=self.name,
                             resource=("keypair", name))

    def limits(self) -> Limits:
        self._record("limits", "")
        used = len(self.live())
        return Limits(self.instance_quota, used, 10 * self.instance_quota, used, 10**6, used * 2048,
                      server_groups=self.server_group_quota, server_groups_used=len(self.server_groups),
                      server_group_members=self.server_group_member_quota)

    def create_server_group(self, name: str, policy: str) -> ServerGroup:
        self._record("create_server_group", name)
        if policy not in SERVER_GROUP_POLICIES:
            raise CloudError(CloudErrorKind.CONFIG, f"create server group {name}: unknown policy {policy!r}",
                             cloud=self.name, status=400)
        with self._lock:
            if 0 <= self.server_group_quota <= len(self.server_groups):
                raise CloudError(CloudErrorKind.QUOTA, f"create server group {name}: Quota exceeded, too many "
                                 "server groups.", cloud=self.name, status=403)
            group = ServerGroup(id=f"{self.name}-group-{next(self._ids)}", name=name, policy=policy)
            self.server_groups[group.id] = group
            return group

    def list_server_groups(self) -> list[ServerGroup]:
        self._record("list_server_groups", "")
        with self._lock:
            return list(self.server_groups.values())

    def delete_server_group(self, group_id: str) -> None:
        self._record("delete_server_group", group_id)
        with self._lock:
            self.server_groups.pop(group_id, None)

    # ---- internals ---------------------------------------------------------------------------

    def _record(self, operation: str, subject: str) -> None:
        with self._lock:
            self.calls.append((operation, subject))
            queued = self._failures.get(operation)
            if queued:
                raise queued.pop(0)

    def _new_floating_ip(self, description: str, server_id: str | None, created: float | None) -> MemoryFloatingIp:
        serial = next(self._ids)
        address = f"127.20.{serial // 250 % 250}.{serial % 250 + 1}"
        fip = MemoryFloatingIp(id=f"{self.name}-fip-{serial}", address=address, description=description,
                               server_id=server_id, created=self.clock() if created is None else created)
        self.floating_ips[fip.id] = fip
        return fip

    def _drop_ports(self, server_id: str) -> None:
        # Nova deletes the server's ports; Neutron keeps their floating IPs, disassociated.
        for fip in self.floating_ips.values():
            if fip.server_id == server_id:
                fip.server_id = None

    def _leave_groups(self, server_id: str) -> None:
        for group in list(self.server_groups.values()):
            if server_id in group.members:
                self.server_groups[group.id] = replace(group, members=tuple(m for m in group.members if m != server_id))

    def _finish_boot(self, server: Server) -> Server:
        fault = self.error_on_boot.get(server.name)
        if fault is not None:
            return replace(server, status=ERROR, fault=fault, fault_kind=classify_fault(fault))
        return replace(server, status=ACTIVE, addresses=self._addresses(ACTIVE))

    def _addresses(self, status: str) -> dict[str, list[Address]]:
        if status != ACTIVE:
            return {}
        return {"private": [{"addr": f"{self.network_prefix}{len(self.servers) % 250 + 1}", "version": 4,
                             "OS-EXT-IPS:type": "fixed"}]}


@dataclass
class MemoryFloatingIp:
    """A floating IP as MemoryCloud holds it: associated with a server's (only) port, or not."""

    id: str
    address: str
    description: str
    server_id: str | None
    created: float


@dataclass
class RecordingSlurm:
    """Records the scontrol updates a flow asks for; `fail` makes every call raise SlurmError."""

    states: list[tuple[tuple[str, ...], str, str | None]] = field(default_factory=list)
    addresses: list[dict[str, str]] = field(default_factory=list)
    fail: bool = False

    def set_state(self, names: Sequence[str], state: str, reason: str | None = None) -> None:
        self._maybe_fail()
        self.states.append((tuple(names), state, reason))

    def update_addresses(self, addrs: Mapping[str, str], hostnames: Mapping[str, str] | None = None) -> None:
        self._maybe_fail()
        self.addresses.append(dict(addrs))

    def state_of(self, node: str) -> tuple[str, str | None] | None:
        for names, state, reason in reversed(self.states):
            if node in names:
                return state, reason
        return None

    def _maybe_fail(self) -> None:
        if self.fail:
            from elastic.errors import SlurmError

            raise SlurmError("scontrol: injected failure")


@dataclass
class MemoryHistory:
    """The FailureMemory interface without a file."""

    cloud_failures: dict[tuple[str, str], float] = field(default_factory=dict)
    node_failure_times: dict[str, list[float]] = field(default_factory=dict)
    down: dict[str, CloudDown] = field(default_factory=dict)
    cloud_problems: dict[str, dict[str, Problem]] = field(default_factory=dict)
    pending: dict[str, dict[str, PendingDelete]] = field(default_factory=dict)
    released: dict[str, float] = field(default_factory=dict)

    def releases(self) -> dict[str, float]:
        return self.released

    def record_releases(self, nodes: list[str], now: float, deletes: dict[str, dict[str, str]] | None = None) -> None:
        for node in nodes:
            self.released[node] = max(now, self.released.get(node, now))
        self.add_pending_deletes(deletes or {}, now)

    def clouds_down(self) -> dict[str, CloudDown]:
        return self.down

    def mark_cloud_down(self, cloud: str, error: str, now: float) -> None:
        before = self.down.get(cloud)
        self.down[cloud] = {"since": before["since"] if before else now, "error": error, "at": now}

    def mark_cloud_up(self, cloud: str) -> None:
        self.down.pop(cloud, None)

    def problems(self) -> dict[str, dict[str, Problem]]:
        return self.cloud_problems

    def record_problem(self, cloud: str, pool: str, kind: str, error: str, now: float) -> None:
        self.cloud_problems.setdefault(cloud, {})[pool] = {"kind": kind, "error": error, "at": now}

    def clear_problem(self, cloud: str, pool: str) -> None:
        self.cloud_problems.get(cloud, {}).pop(pool, None)
        if not self.cloud_problems.get(cloud, True):
            self.cloud_problems.pop(cloud)

    def pending_deletes(self) -> dict[str, dict[str, PendingDelete]]:
        return self.pending

    def add_pending_deletes(self, entries: dict[str, dict[str, str]], now: float) -> None:
        add_pending(self.pending, entries, now)

    def clear_pending_deletes(self, node_clouds: dict[str, list[str]]) -> None:
        for node, clouds in node_clouds.items():
            for cloud in clouds:
                self.pending.get(node, {}).pop(cloud, None)
            if not self.pending.get(node, True):
                self.pending.pop(node)

    def record_node_failures(self, nodes: list[str], now: float, window_seconds: float | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in dict.fromkeys(nodes):
            times = self.node_failure_times.setdefault(node, [])
            if window_seconds is not None:
                times[:] = [t for t in times if now - t < window_seconds]
            times.append(now)
            counts[node] = len(times)
        return counts

    def record_cloud_failure(self, cloud: str, pool: str, kind: str, now: float) -> None:
        self.cloud_failures[(cloud, pool)] = now

    def cooling_down(self, cloud: str, pool: str, now: float, cooldown_seconds: float) -> bool:
        when = self.cloud_failures.get((cloud, pool))
        return when is not None and now - when < cooldown_seconds

    def clear_cloud_failure(self, cloud: str, pool: str) -> None:
        self.cloud_failures.pop((cloud, pool), None)


class FakeClock:
    """time.time and time.sleep in one: sleeping advances the clock instantly."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

