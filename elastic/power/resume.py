"""The resume flow: give every requested node exactly one ACTIVE server and tell Slurm its address.

Rounds: under the nodes' locks, look at every cloud for servers already named for the nodes
(adopt, replace, ignore), then create the rest on the pool's clouds in order, falling back on
quota or capacity; release the locks and wait, polling one list per cloud. A server that ends in
ERROR is deleted and its node tries the pool's next cloud in the next round. The addresses of the
servers one poll finds ACTIVE go to Slurm in one scontrol call right then: a VM's slurmd may
register within seconds, and must not find Slurm still resolving its bare name while a slower
server of the batch boots. Every node not served in the end is put in a Slurm state whose reason
says why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from elastic import userdata
from elastic.cloud import ACTIVE, ERROR, BootRequest, BootTarget, Cloud, Server
from elastic.config import META_CLUSTER, META_NODE, META_POOL, Pool, PoolCloud
from elastic.errors import FALLBACK_KINDS, PERMANENT_KINDS, CloudError, CloudErrorKind, ConfigError, SlurmError
from elastic.fleet import Fleet, Sighting
from elastic.history import Problem
from elastic.pacing import poll_pause
from elastic.power import placement
from elastic.power.outcome import Failure, Outcome, failure_from, internal_failure, report_failures
from elastic.power.services import Services
from elastic.retry import backoff_delay, with_retries


@dataclass
class _Booting:
    server: Server
    pool: str
    entry: PoolCloud | None
    created_here: bool = False  # `server.created` is our clock's, not the cloud's


@dataclass
class _Round:
    """State carried across rounds of one resume run."""

    tried: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # node -> clouds
    failures: dict[str, dict[str, Failure]] = field(default_factory=lambda: defaultdict(dict))  # node -> cloud ->
    served_pools: set[tuple[str, str]] = field(default_factory=set)  # (cloud, pool) that served a node
    boot_seen: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # cloud -> seconds

    def note(self, node: str, cloud: str, failure: Failure) -> None:
        self.tried[node].add(cloud)
        self.failures[node].pop(cloud, None)
        self.failures[node][cloud] = failure  # last tried last

    def verdict(self, node: str, default: Failure) -> Failure:
        """The node's failure across every cloud it tried: the last cloud's kind, the others named
        too; permanent (DOWN) only when every cloud failed permanently."""
        failures = self.failures.get(node)
        if not failures:
            return default
        *others, last = failures.values()
        if not others:
            return last
        also = "; ".join(f"{f.kind} on {cloud}" for cloud, f in list(failures.items())[:-1])
        return Failure(last.kind, f"{last.message} (also {also})",
                       permanent=all(f.permanent for f in failures.values()))


def resume(nodes: Sequence[str], svc: Services) -> Outcome:
    outcome = Outcome()
    config = svc.config
    by_pool, unknown = config.split_by_pool(nodes)
    if unknown:
        outcome.fail(unknown, Failure("no-pool", f"not in any pool of {config.source or 'the config'}", permanent=True))
    pending = {node: pool for pool, members in by_pool.items() for node in members}
    deadline = svc.clock() + config.timeouts.boot
    state = _Round()
    timeout = Failure("timeout", "no server became ACTIVE in time")
    try:
        fleet = svc.fleet()
        while pending:
            booting = _place_round(pending, state, outcome, fleet, svc, deadline)
            pending = _wait(booting, state, outcome, fleet, svc, deadline)
            for node in list(pending):
                if svc.clock() >= deadline:
                    outcome.fail([node], state.verdict(node, timeout))
                    pending.pop(node)
    except Exception as exc:  # fail closed: no node may sit in POWERING_UP until ResumeTimeout
        svc.log.exception("resume.internal_error", error=str(exc))
        unserved = [n for n in nodes if n not in outcome.served and n not in outcome.failed]
        outcome.fail(unserved, internal_failure(exc))
    _report_to_slurm(outcome, svc)
    if svc.boots is not None:
        for cloud, seen in state.boot_seen.items():
            svc.boots.record(cloud, seen)  # the next runs' poll cadence
    return outcome


# ---- placing: look, adopt, create ----------------------------------------------------------


def _place_round(pending: dict[str, str], state: _Round, outcome: Outcome, fleet: Fleet, svc: Services,
                 deadline: float) -> dict[str, _Booting]:
    booting: dict[str, _Booting] = {}
    with svc.locks(sorted(pending)):
        sighting = fleet.find(sorted(pending))
        for node, clouds in fleet.blind_spots(pending, sighting).items():
            # A server of the node may sit on a cloud we cannot see: creating there could make a
            # second one, so that cloud is out for this node in this run.
            for cloud in clouds:
                state.note(node, cloud, failure_from(sighting.unseen[cloud]))
        doomed, blocked = _condemned(pending, sighting, fleet, svc)
        for node, unanswered in blocked.items():
            for cloud in unanswered - state.tried[node]:
                state.note(node, cloud, Failure("unreachable", f"{cloud}: an earlier delete there is still pending"))
        to_create: dict[str, list[str]] = defaultdict(list)
        stale: list[Server] = []
        for node, pool_name in pending.items():
            usable = [s for s in sighting.of(node) if s.id not in doomed and s.cloud not in blocked.get(node, ())]
            keep, extra = placement.choose_server(usable)
            stale += extra
            if keep is not None:
                svc.log.info("resume.adopt", node=node, cloud=keep.cloud, server=keep.id, status=keep.status)
                booting[node] = _Booting(keep, pool_name, _entry_for(svc.config.pools[pool_name], keep.cloud))
            else:
                to_create[pool_name].append(node)
        fleet.delete(stale, why="replaced or duplicate")  # failures are logged; reconcile finds them again
        for pool_name, members in to_create.items():
            booting.update(_create_in_pool(pool_name, members, state, outcome, fleet, svc, deadline))
    return booting


def _condemned(pending: dict[str, str], sighting: Sighting, fleet: Fleet,
               svc: Services) -> tuple[set[str], dict[str, set[str]]]:
    """Servers that a suspend could not delete (the cloud did not answer) are deleted now, never
    adopted: their slurmd predates this resume. Returns their ids, and per node the clouds where
    such a delete is still due: the node does not boot there in this run."""
    marked = {node: set(clouds) for node, clouds in svc.history.pending_deletes().items() if node in pending}
    if not marked:
        return set(), {}
    doomed = [s for node, clouds in marked.items() for s in sighting.of(node) if s.cloud in clouds]
    deletion = fleet.delete(doomed, why="pending delete")
    still: dict[str, set[str]] = defaultdict(set)
    for server, _ in deletion.failed.values():
        still[server.name].add(server.cloud)
    for node, clouds in marked.items():
        still[node] |= {c for c in clouds if c in sighting.unseen}
    svc.history.clear_pending_deletes({node: sorted(clouds - still[node]) for node, clouds in marked.items()})
    return {s.id for s in doomed}, {node: clouds for node, clouds in still.items() if clouds}


def _create_in_pool(pool_name: str, nodes: list[str], state: _Round, outcome: Outcome, fleet: Fleet,
                    svc: Services, deadline: float) -> dict[str, _Booting]:
    pool = svc.config.pools[pool_name]
    now = svc.clock()
    problems = svc.history.problems()
    down = svc.history.clouds_down()
    # Clouds that refused this pool lately (quota, capacity, a permanent error) or did not answer
    # are tried last, for the cloud's cooldown; then the pool's own order is back.
    later = [e.cloud for e in pool.clouds
             if svc.history.cooling_down(e.cloud, pool_name, now, svc.config.clouds[e.cloud].cooldown)
             or now - _problem_at(problems, e.cloud, pool_name) < svc.config.clouds[e.cloud].cooldown
             or e.cloud in down]
    booting: dict[str, _Booting] = {}
    left = list(nodes)
    for entry in placement.cloud_order(pool, later):
        if svc.clock() >= deadline:
            break  # no create starts after the boot deadline
        candidates = [n for n in left if entry.cloud not in state.tried[n]]
        if not candidates:
            continue
        room = _room_on(entry, pool_name, fleet, svc)
        if room is not None:
            room = max(room - _count_on(booting, entry.cloud), 0)
        go, over = placement.split(candidates, room)
        for node in over:
            state.note(node, entry.cloud, Failure("limit", f"pool {pool_name} reached max_nodes on {entry.cloud}"))
        started, failed = _create_on_cloud(pool_name, pool, entry, go, fleet, svc, deadline)
        booting.update(started)
        for node in started:
            state.tried[node].add(entry.cloud)
        for node, failure in failed.items():
            state.note(node, entry.cloud, failure)
        left = [n for n in left if n not in booting]
        if not left:
            break
    for node in left:  # every cloud of the pool tried, or the boot deadline passed
        outcome.fail([node], state.verdict(node, Failure("capacity", "no configured cloud could take it")))
    return booting


def _room_on(entry: PoolCloud, pool_name: str, fleet: Fleet, svc: Services) -> int | None:
    """How many more of the pool's servers fit under entry.max_nodes (None: no cap).

    Counts every live server of the pool on that cloud, not only those of the nodes at hand: an
    earlier resume's servers count too. A cloud we cannot list gets no room.
    """
    if entry.max_nodes is None:
        return None
    cloud = fleet.clouds[entry.cloud]
    try:
        servers = with_retries(lambda: cloud.list_servers(svc.config.cluster), sleep=svc.sleep)
    except CloudError as error:
        svc.log.warning("resume.list_failed", cloud=entry.cloud, kind=error.kind.value, error=str(error))
        return 0
    live = sum(1 for s in servers if s.pool == pool_name and not s.deleting and s.status != ERROR)
    return placement.room_on(entry, live)


def _count_on(booting: dict[str, _Booting], cloud: str) -> int:
    return sum(1 for b in booting.values() if b.server.cloud == cloud)


def _create_on_cloud(pool_name: str, pool: Pool, entry: PoolCloud, nodes: list[str], fleet: Fleet,
                     svc: Services, deadline: float) -> tuple[dict[str, _Booting], dict[str, Failure]]:
    """Create the nodes' servers on one cloud; a failure here sends a node to the pool's next cloud."""
    if not nodes:
        return {}, {}
    cloud = fleet.clouds[entry.cloud]
    try:
        target = with_retries(lambda: cloud.resolve_boot(pool.flavor_on(entry), pool.image_on(entry), entry.network),
                              sleep=svc.sleep, give_up_at=deadline, clock=svc.clock)
    except CloudError as error:
        svc.log.error("resume.resolve_failed", cloud=entry.cloud, pool=pool_name, kind=error.kind.value,
                      error=str(error))
        _remember_problem(error, entry.cloud, pool_name, svc)
        return {}, {node: failure_from(error) for node in nodes}
    try:
        requests = {node: _boot_request(node, pool_name, pool, entry, target, svc) for node in nodes}
    except ConfigError as error:
        # The template's file:line only: a message could quote a user_data_vars value (a secret).
        return {}, {node: Failure("config", f"user-data template {error.where}", permanent=True) for node in nodes}

    def create(node: str) -> tuple[str, Server | CloudError | None]:
        if svc.clock() >= deadline:
            return node, None  # no create starts after the boot deadline
        started = svc.monotonic()
        try:
            server = with_retries(
                lambda: cloud.create_server(requests[node]), sleep=svc.sleep,
                # A lost reply may hide a create that worked: look before sending it again.
                before_retry=lambda: _find_live(cloud, node, svc),
                on_retry=lambda err, delay: svc.log.warning("cloud.retry", cloud=entry.cloud, node=node,
                                                            kind=err.kind.value, delay=delay),
                give_up_at=deadline, clock=svc.clock,
            )
        except CloudError as error:
            svc.log.warning("cloud.create", cloud=entry.cloud, node=node, ok=False, kind=error.kind.value,
                            error=str(error), seconds=round(svc.monotonic() - started, 3))
            return node, error
        svc.log.info("cloud.create", cloud=entry.cloud, node=node, ok=True, server=server.id,
                     seconds=round(svc.monotonic() - started, 3))
        return node, server

    workers = min(svc.config.clouds[entry.cloud].max_parallel, len(nodes))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"create-{entry.cloud}") as pool_exec:
        results = list(pool_exec.map(create, nodes))
    started: dict[str, _Booting] = {}
    failed: dict[str, Failure] = {}
    unanswered: dict[str, dict[str, str]] = {}
    for node, result in results:
        if isinstance(result, Server):
            started[node] = _Booting(result, pool_name, entry, created_here=True)
        elif isinstance(result, CloudError):
            failed[node] = failure_from(result)
            if result.kind in FALLBACK_KINDS:
                svc.history.record_cloud_failure(entry.cloud, pool_name, result.kind.value, svc.clock())
            _remember_problem(result, entry.cloud, pool_name, svc)
            if result.kind in _CREATE_MAY_HAVE_HAPPENED:
                # The last create may have reached Nova before its reply was lost: whatever it made
                # is deleted by a later run (or reconcile) once the cloud answers.
                unanswered[node] = {entry.cloud: f"create unconfirmed: {result.message}"}
    svc.history.add_pending_deletes(unanswered, svc.clock())
    return started, failed


# A create that ended in these may have made a server; a 429 or a 4xx was refused before that.
_CREATE_MAY_HAVE_HAPPENED = frozenset({CloudErrorKind.UNREACHABLE, CloudErrorKind.TRANSIENT})


def _remember_problem(error: CloudError, cloud: str, pool: str, svc: Services) -> None:
    """A permanent error is the cloud's (or the pool's on that cloud): status and check show it."""
    if error.kind in PERMANENT_KINDS:
        svc.history.record_problem(cloud, pool, error.kind.value, error.message, svc.clock())


def _problem_at(problems: Mapping[str, Mapping[str, Problem]], cloud: str, pool: str) -> float:
    """When the cloud last had a permanent error for the pool; -inf when it has none."""
    problem = problems.get(cloud, {}).get(pool)
    return problem["at"] if problem is not None else -math.inf


def _find_live(cloud: Cloud, node: str, svc: Services) -> Server | None:
    """The node's server that an unanswered create may have made. A look that fails stops the
    retries: resending blind could make a second server."""
    try:
        servers = with_retries(lambda: cloud.list_servers(svc.config.cluster, [node]), sleep=svc.sleep)
    except CloudError as error:
        raise CloudError(error.kind, f"cannot look before resending a create: {error.message}", cloud=error.cloud,
                         status=error.status, final=True, resource=error.resource) from None
    keep, _ = placement.choose_server(servers)
    return keep


def _boot_request(node: str, pool_name: str, pool: Pool, entry: PoolCloud, target: BootTarget,
                  svc: Services) -> BootRequest:
    config = svc.config
    metadata = {**pool.boot.metadata, META_CLUSTER: config.cluster, META_NODE: node, META_POOL: pool_name}
    encoded = None
    if pool.boot.user_data is not None:
        context = {
            **pool.boot.user_data_vars,
            "node": node, "pool": pool_name, "cluster": config.cluster, "cloud": entry.cloud,
            "controller": config.controller,
        }
        encoded = userdata.encode_user_data(userdata.render_user_data(pool.boot.user_data, context))
    return BootRequest(
        name=node, flavor_id=target.flavor_id, image_id=target.image_id, network_id=target.network_id,
        metadata=metadata, key_name=pool.boot.key_name, security_groups=pool.boot.security_groups,
        user_data=encoded, availability_zone=entry.availability_zone or pool.boot.availability_zone,
        boot_volume_size=pool.boot.boot_volume_size,
    )


def _entry_for(pool: Pool, cloud: str) -> PoolCloud | None:
    return next((entry for entry in pool.clouds if entry.cloud == cloud), None)


# ---- waiting: one list per cloud per poll ---------------------------------------------------


def _wait(booting: dict[str, _Booting], state: _Round, outcome: Outcome, fleet: Fleet, svc: Services,
          deadline: float) -> dict[str, str]:
    """Poll until every booting node is served, cancelled or failed; return nodes to place again."""
    again: dict[str, str] = {}
    waiting = dict(booting)
    boots = svc.boots
    expected = {cloud: boots.expected(cloud) for cloud in {b.server.cloud for b in booting.values()}} if boots else {}
    while waiting:
        served_now: dict[str, str] = {}
        try:
            pause = _poll_once(waiting, served_now, again, state, outcome, fleet, svc, expected)
        finally:
            _send_addresses(served_now, svc)  # what one poll found reaches Slurm even if it failed half-way
        if waiting and svc.clock() >= deadline:
            fleet.delete([item.server for item in waiting.values()], why="boot timeout")
            for node, item in waiting.items():
                state.note(node, item.server.cloud, Failure(
                    "timeout", f"server on {item.server.cloud} not ACTIVE within {svc.config.timeouts.boot:.0f}s"))
                outcome.fail([node], state.verdict(node, Failure("timeout", "no server became ACTIVE in time")))
            break
        if waiting:
            svc.sleep(pause)
    return again


def _poll_once(waiting: dict[str, _Booting], served_now: dict[str, str], again: dict[str, str], state: _Round,
               outcome: Outcome, fleet: Fleet, svc: Services, expected: Mapping[str, float | None]) -> float:
    """One list per cloud, the clouds in parallel; judge each waiting node, moving it out of
    `waiting` once decided. Returns how long to pause before the next poll: from the clouds'
    expected boot times and the lists' own duration (pacing.poll_pause), unless timeouts.poll says."""
    by_cloud: dict[str, list[str]] = defaultdict(list)
    for node, item in waiting.items():
        by_cloud[item.server.cloud].append(node)
    listed = svc.monotonic()
    results = fleet.poll(by_cloud)
    list_seconds = svc.monotonic() - listed
    now = svc.clock()
    pause = min(poll_pause(now, first_created=min((waiting[n].server.created or now for n in members), default=None),
                           expected_boot=expected.get(cloud), list_seconds=list_seconds,
                           fixed=svc.config.timeouts.poll)
                for cloud, members in by_cloud.items())
    lost: dict[str, dict[str, str]] = {}
    for cloud_name, result in results.items():
        members = by_cloud[cloud_name]
        if isinstance(result, CloudError):
            if result.retryable:
                # Polling on through a 429 storm would only feed it: wait as long as asked.
                pause = max(pause, backoff_delay(1, result))
                svc.log.warning("resume.poll_failed", cloud=cloud_name, error=str(result), pause=pause)
                continue
            # The cloud stopped answering (or refuses us) while our servers boot there: they are
            # deleted once it answers again, and these nodes try the pool's next cloud now.
            svc.log.warning("resume.cloud_lost", cloud=cloud_name, nodes=members, error=str(result))
            for node in members:
                item = waiting.pop(node)
                state.note(node, cloud_name, failure_from(result))
                lost[node] = {cloud_name: f"lost while booting: {result.message}"}
                again[node] = item.pool
            continue
        current = {s.id: s for s in result}
        for node in members:
            verdict = _judge(node, waiting[node], current.get(waiting[node].server.id), state, fleet, svc)
            if isinstance(verdict, _Pending):
                continue
            item = waiting.pop(node)
            if isinstance(verdict, _Served):
                outcome.served[node] = verdict.address
                if verdict.address:
                    served_now[node] = verdict.address
            elif isinstance(verdict, _Cancelled):
                outcome.cancelled.add(node)
            else:
                state.note(node, item.server.cloud, verdict)
                again[node] = item.pool
    svc.history.add_pending_deletes(lost, svc.clock())
    return pause


@dataclass(frozen=True)
class _Pending:
    pass


@dataclass(frozen=True)
class _Served:
    address: str | None


@dataclass(frozen=True)
class _Cancelled:
    pass


def _judge(node: str, item: _Booting, server: Server | None, state: _Round, fleet: Fleet,
           svc: Services) -> _Pending | _Served | _Cancelled | Failure:
    """What one poll says about a booting node; a Failure sends it to the pool's next cloud."""
    if server is None or server.deleting:
        # Someone (a suspend for this node, an admin) deleted it while we waited.
        svc.log.info("resume.cancelled", node=node, cloud=item.server.cloud, server=item.server.id)
        return _Cancelled()
    if server.status == ERROR:
        kind = server.fault_kind or CloudErrorKind.BOOT
        svc.log.warning("resume.server_error", node=node, cloud=server.cloud, server=server.id, fault=server.fault)
        if kind in FALLBACK_KINDS:
            svc.history.record_cloud_failure(server.cloud, item.pool, kind.value, svc.clock())
        fleet.delete([server], why="ERROR")
        return Failure(kind.value, f"server went ERROR on {server.cloud}: {server.fault or 'no fault given'}")
    if server.status != ACTIVE:
        return _Pending()
    address = _address_for(server, item, fleet, svc)
    if isinstance(address, Failure):
        return address
    if address is None and svc.config.slurm.addresses == "scontrol":
        return _Pending()  # some clouds list the port a moment after ACTIVE
    if item.created_here and item.server.created is not None:
        state.boot_seen[server.cloud].append(svc.clock() - item.server.created)
    if (server.cloud, item.pool) not in state.served_pools:
        state.served_pools.add((server.cloud, item.pool))
        svc.history.clear_cloud_failure(server.cloud, item.pool)
        svc.history.clear_problem(server.cloud, item.pool)
    svc.log.info("resume.active", node=node, cloud=server.cloud, server=server.id, address=address)
    return _Served(address)


def _address_for(server: Server, item: _Booting, fleet: Fleet, svc: Services) -> str | Failure | None:
    entry = item.entry
    if entry is not None and entry.floating_ip and server.floating_address() is None:
        try:
            return fleet.clouds[server.cloud].attach_floating_ip(server, entry.floating_ip)
        except CloudError as error:
            fleet.delete([server], why="floating IP failed")
            return failure_from(error)
    return placement.server_address(server, entry)


# ---- cleanup and reporting ------------------------------------------------------------------


def _send_addresses(addresses: dict[str, str], svc: Services) -> None:
    if not addresses or svc.config.slurm.addresses != "scontrol":
        return
    try:
        svc.slurm.update_addresses(addresses)
        svc.log.info("slurm.update_addresses", ok=True, nodes=sorted(addresses))
    except SlurmError as error:
        svc.log.error("slurm.update_addresses", ok=False, error=str(error), nodes=sorted(addresses))


def _report_to_slurm(outcome: Outcome, svc: Services) -> None:
    # A node still POWERING_UP is not helped by `down` alone in 22.05: it stays POWERING_UP, and
    # ResumeTimeout later calls ResumeFail for it. power_down_force first clears POWERING_UP and
    # requeues the job; `down` after it keeps the node down~ with our reason (measured on 22.05.8).
    report_failures(outcome.failed, svc, transient_state="power_down_force",
                    permanent_states=("power_down_force", "down"))
