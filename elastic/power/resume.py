"""The resume flow: give every requested node exactly one ACTIVE server and tell Slurm its address.

Rounds: under the nodes' locks, look at every cloud for servers already named for the nodes
(adopt, replace, ignore), then create the rest on the pool's clouds in order, falling back on
quota or capacity; release the locks and wait, polling one list per cloud. A server that ends in
ERROR is deleted and its node tries the pool's next cloud in the next round. The addresses of the
servers one poll finds ACTIVE go to Slurm in one scontrol call right then: a VM's slurmd may
register within seconds, and must not find Slurm still resolving its bare name while a slower
server of the batch boots. Every node not served in the end is put in a Slurm state whose reason
says why.

Nodes are grouped by the job that asked for them (SLURM_RESUME_FILE). A pool with `placement:
together` places each job whole on one cloud sized against its quota (power/resume_jobs.py); a
pool with `placement: spread` places node by node, as below. The create itself, shared by both,
is power/create.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from elastic.cloud import ACTIVE, ERROR, Server
from elastic.errors import FALLBACK_KINDS, CloudError, CloudErrorKind, SlurmError
from elastic.fleet import Fleet, Sighting
from elastic.pacing import poll_pause
from elastic.power import placement
from elastic.power.create import (
    Booting,
    RunState,
    cloud_order,
    count_on,
    create_on_cloud,
    entry_for,
    room_on,
)
from elastic.power.job_placement import group_by_job
from elastic.power.outcome import Failure, Outcome, failure_from, internal_failure, report_failures
from elastic.power.resume_jobs import anchors_of, create_jobs, job_of_node, move_whole_jobs, release_broken_jobs
from elastic.power.services import Services
from elastic.resume_request import ResumeJob
from elastic.retry import backoff_delay
from elastic.served import Served


def resume(nodes: Sequence[str], svc: Services, jobs: Sequence[ResumeJob] = ()) -> Outcome:
    """Serve `nodes` (argv); `jobs` (from SLURM_RESUME_FILE) say which job asked for which node."""
    outcome = Outcome()
    config = svc.config
    by_pool, unknown = config.split_by_pool(nodes)
    if unknown:
        outcome.fail(unknown, Failure("no-pool", f"not in any pool of {config.source or 'the config'}", permanent=True))
    pending = {node: pool for pool, members in by_pool.items() for node in members}
    started = svc.clock()
    deadline = started + config.timeouts.boot
    state = RunState()
    state.job_of = {node: job for job in group_by_job(list(pending), jobs) for node in job.nodes}
    state.started = started
    timeout = Failure("timeout", "no server became ACTIVE in time")
    try:
        fleet = svc.fleet()
        while pending:
            booting, busy = _place_round(pending, state, outcome, fleet, svc, deadline)
            for node in release_broken_jobs(state, outcome, fleet, svc):
                booting.pop(node, None)
            pending = _wait(booting, state, outcome, fleet, svc, deadline)
            move_whole_jobs(pending, state, outcome, fleet, svc)
            pending.update(busy)
            for node in list(pending):
                if svc.clock() >= deadline:
                    outcome.fail([node], state.verdict(node, _lock_held(svc, started) if node in busy else timeout))
                    pending.pop(node)
            for node in release_broken_jobs(state, outcome, fleet, svc):
                pending.pop(node, None)
            if busy and not booting:
                svc.sleep(LOCK_RETRY_SECONDS)  # nothing of ours to poll: let the other run get on
    except Exception as exc:  # fail closed: no node may sit in POWERING_UP until ResumeTimeout
        svc.log.exception("resume.internal_error", error=str(exc))
        unserved = [n for n in nodes if n not in outcome.served and n not in outcome.failed
                    and n not in outcome.cancelled]  # a cancelled node is the suspend's: powered down
        outcome.fail(unserved, internal_failure(exc))
    _report_to_slurm(outcome, svc)
    if svc.served is not None:  # for the nodes' suspend, which deletes these while it looks for others
        svc.served.record(config.cluster, {node: Served(state.where[node].cloud, state.where[node].id, pool)
                                           for node in outcome.served
                                           if node in state.where and (pool := config.pool_of(node))})
    if svc.boots is not None:
        for cloud, seen in state.boot_seen.items():
            svc.boots.record(cloud, seen)  # the next runs' poll cadence
    return outcome


# ---- placing: look, adopt, create ----------------------------------------------------------


# How often a resume comes back for nodes whose locks another run holds, when it has nothing else
# to do. A suspend that holds them deletes in seconds; another resume of them, in one round.
LOCK_RETRY_SECONDS = 0.5


def _lock_held(svc: Services, started: float) -> Failure:
    return Failure("timeout", f"node lock held by another elastic run for {svc.clock() - started:.0f}s")


def _place_round(pending: dict[str, str], state: RunState, outcome: Outcome, fleet: Fleet, svc: Services,
                 deadline: float) -> tuple[dict[str, Booting], dict[str, str]]:
    """Place the nodes whose locks are free; return those now booting, and those another run held."""
    booting: dict[str, Booting] = {}
    with svc.locks(sorted(pending)) as held:
        busy = {node: pool for node, pool in pending.items() if node not in held}
        if busy:
            svc.log.info("resume.lock_busy", nodes=sorted(busy))
        pending = {node: pool for node, pool in pending.items() if node in held}
        _drop_released(pending, state, outcome, svc)
        if not pending:
            return booting, busy
        # The same one list per cloud also finds where the jobs' other allocated nodes run.
        others = sorted({n for node in pending for n in job_of_node(node, state).others if n not in pending})
        sighting = fleet.find(sorted(pending) + others)
        for node, clouds in fleet.blind_spots(pending, sighting).items():
            # A server of the node may sit on a cloud we cannot see: creating there could make a
            # second one, so that cloud is out for this node in this run.
            for cloud in clouds:
                state.note(node, cloud, failure_from(sighting.unseen[cloud]))
        doomed, blocked = _condemned(pending, sighting, fleet, svc, state.started)
        # Again: a suspend writes its release before it takes any lock, so one may have come while
        # we looked. Its deletes stay pending (`_condemned`), and no server is made for it now.
        _drop_released(pending, state, outcome, svc)
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
                booting[node] = Booting(keep, pool_name, entry_for(svc.config.pools[pool_name], keep.cloud))
                state.where[node] = keep
            else:
                to_create[pool_name].append(node)
        fleet.delete(stale, why="replaced or duplicate")  # failures are logged; reconcile finds them again
        anchors = anchors_of(pending, sighting, state)
        for pool_name, members in to_create.items():
            if svc.config.pools[pool_name].placement == "together":
                booting.update(create_jobs(pool_name, members, anchors, state, outcome, fleet, svc, deadline))
            else:
                booting.update(_create_in_pool(pool_name, members, state, outcome, fleet, svc, deadline))
    return booting, busy


def _drop_released(pending: dict[str, str], state: RunState, outcome: Outcome, svc: Services) -> None:
    """Cancel the nodes of `pending` released after this resume started (and drop them from it)."""
    for node in _released_since(pending, state.started, svc):
        # Slurm sent a suspend (power_down_force) for the node after asking for this resume, and
        # that suspend took the lock first: Slurm counts the node as powered down, and a server
        # booted now would start its slurmd before the next power-up, which would then wait for
        # it until ResumeTimeout. Cancelled, as when a suspend deletes the server while we wait.
        svc.log.info("resume.cancelled", node=node, why="released after this resume started")
        pending.pop(node)
        outcome.cancelled.add(node)


def _released_since(nodes: Iterable[str], started: float, svc: Services) -> list[str]:
    """The nodes whose release (suspend, resume-fail) started after this resume did."""
    released = svc.history.releases()
    return sorted(node for node in nodes if released.get(node, started) > started)


def _cancel_released(waiting: dict[str, Booting], state: RunState, outcome: Outcome, fleet: Fleet,
                     svc: Services) -> None:
    """Slurm sent a suspend for a node we are booting (power_down_force): its server goes now, by
    us, whether or not that suspend gets the node's lock; the node is cancelled, not failed."""
    released = _released_since(waiting, state.started, svc)
    if not released:
        return
    servers = [waiting.pop(node).server for node in released]
    svc.log.info("resume.cancelled", nodes=released, why="released while booting")
    deletion = fleet.delete(servers, why="released while booting")
    svc.history.add_pending_deletes({server.name: {server.cloud: f"released while booting: {error.message}"}
                                     for server, error in deletion.failed.values()}, svc.clock())
    outcome.cancelled.update(released)


def _condemned(pending: dict[str, str], sighting: Sighting, fleet: Fleet, svc: Services,
               started: float) -> tuple[set[str], dict[str, set[str]]]:
    """Servers that a suspend could not delete (the cloud did not answer) are deleted now, never
    adopted: their slurmd predates this resume. Returns their ids, and per node the clouds where
    such a delete is still due: the node does not boot there in this run. The pending deletes of a
    node released after `started` (the run's start) are that release's, and stay pending."""
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
    # Read after the pending deletes: a suspend writes its release and its deletes in one write.
    later = set(_released_since(marked, started, svc))
    svc.history.clear_pending_deletes({node: sorted(clouds - still[node]) for node, clouds in marked.items()
                                       if node not in later})
    return {s.id for s in doomed}, {node: clouds for node, clouds in still.items() if clouds}


def _create_in_pool(pool_name: str, nodes: list[str], state: RunState, outcome: Outcome, fleet: Fleet,
                    svc: Services, deadline: float) -> dict[str, Booting]:
    pool = svc.config.pools[pool_name]
    booting: dict[str, Booting] = {}
    left = list(nodes)
    for entry in cloud_order(pool_name, svc):
        if svc.clock() >= deadline:
            break  # no create starts after the boot deadline
        candidates = [n for n in left if entry.cloud not in state.tried[n]]
        if not candidates:
            continue
        room = room_on(entry, pool_name, fleet, svc)
        if room is not None:
            room = max(room - count_on(booting, entry.cloud), 0)
        go, over = placement.split(candidates, room)
        for node in over:
            state.note(node, entry.cloud, Failure("limit", f"pool {pool_name} reached max_nodes on {entry.cloud}"))
        started, failed = create_on_cloud(pool_name, pool, entry, go, fleet, svc, deadline)
        booting.update(started)
        for node in started:
            state.tried[node].add(entry.cloud)
            state.where[node] = started[node].server
        for node, failure in failed.items():
            state.note(node, entry.cloud, failure)
        left = [n for n in left if n not in booting]
        if not left:
            break
    for node in left:  # every cloud of the pool tried, or the boot deadline passed
        outcome.fail([node], state.verdict(node, Failure("capacity", "no configured cloud could take it")))
    return booting


# ---- waiting: one list per cloud per poll ---------------------------------------------------


def _wait(booting: dict[str, Booting], state: RunState, outcome: Outcome, fleet: Fleet, svc: Services,
          deadline: float) -> dict[str, str]:
    """Poll until every booting node is served, cancelled or failed; return nodes to place again."""
    again: dict[str, str] = {}
    waiting = dict(booting)
    boots = svc.boots
    expected = {cloud: boots.expected(cloud) for cloud in {b.server.cloud for b in booting.values()}} if boots else {}
    first = _first_pause(waiting, svc, expected, deadline)
    if first > 0:
        svc.sleep(first)
    while waiting:
        _cancel_released(waiting, state, outcome, fleet, svc)
        if not waiting:
            break
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


def _first_pause(waiting: Mapping[str, Booting], svc: Services, expected: Mapping[str, float | None],
                 deadline: float) -> float:
    """How long to wait before the first poll. On a cloud whose boot time earlier runs learned,
    servers this run created a moment ago are not ACTIVE yet: the first look waits as a later one
    would (at most EARLY_POLL_MAX, so an early ERROR is still seen soon). An adopted server may be
    ACTIVE already, and without a learned boot time nothing is known: then look at once."""
    if not waiting or not all(item.created_here and item.server.status != ACTIVE
                              and expected.get(item.server.cloud) is not None for item in waiting.values()):
        return 0.0
    now = svc.clock()
    by_cloud: dict[str, list[float]] = defaultdict(list)
    for item in waiting.values():
        by_cloud[item.server.cloud].append(item.server.created if item.server.created is not None else now)
    pause = min(poll_pause(now, first_created=min(created), expected_boot=expected.get(cloud), list_seconds=0.0,
                           fixed=svc.config.timeouts.poll)
                for cloud, created in by_cloud.items())
    return max(0.0, min(pause, deadline - now))


def _poll_once(waiting: dict[str, Booting], served_now: dict[str, str], again: dict[str, str], state: RunState,
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


def _judge(node: str, item: Booting, server: Server | None, state: RunState, fleet: Fleet,
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


def _address_for(server: Server, item: Booting, fleet: Fleet, svc: Services) -> str | Failure | None:
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
