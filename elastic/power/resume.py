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
from dataclasses import dataclass, field, replace

from elastic import userdata
from elastic.cloud import ACTIVE, ERROR, BootRequest, BootTarget, Cloud, Flavor, Limits, Server, ServerGroup
from elastic.config import META_CLUSTER, META_NODE, META_POOL, Pool, PoolCloud
from elastic.errors import FALLBACK_KINDS, PERMANENT_KINDS, CloudError, CloudErrorKind, ConfigError, SlurmError
from elastic.fleet import Fleet, Sighting
from elastic.history import Problem
from elastic.power import placement, server_groups
from elastic.power.job_placement import (
    Decision,
    Headroom,
    JobNodes,
    anchor_of,
    fits_nowhere,
    group_by_job,
    headroom,
    place_jobs,
    regroup,
)
from elastic.power.outcome import Failure, Outcome, failure_from, internal_failure, report_failures
from elastic.power.services import Services
from elastic.resume_request import ResumeJob
from elastic.retry import backoff_delay, with_retries


@dataclass
class _Booting:
    server: Server
    pool: str
    entry: PoolCloud | None


@dataclass
class _Round:
    """State carried across rounds of one resume run."""

    tried: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # node -> clouds
    failures: dict[str, dict[str, Failure]] = field(default_factory=lambda: defaultdict(dict))  # node -> cloud ->
    served_pools: set[tuple[str, str]] = field(default_factory=set)  # (cloud, pool) that served a node
    job_of: dict[str, JobNodes] = field(default_factory=dict)  # node -> the job that asked for it
    where: dict[str, Server] = field(default_factory=dict)  # node -> its server booting or served in this run
    # One quota read per cloud per run (None: it failed), then kept current with this run's creates.
    limits: dict[str, Limits | None] = field(default_factory=dict)
    flavors: dict[tuple[str, str], Flavor | None] = field(default_factory=dict)
    groups: dict[str, dict[str, ServerGroup]] = field(default_factory=dict)  # cloud -> name -> our group
    released: set[str] = field(default_factory=set)  # all_or_nothing jobs already released

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


def resume(nodes: Sequence[str], svc: Services, jobs: Sequence[ResumeJob] = ()) -> Outcome:
    """Serve `nodes` (argv); `jobs` (from SLURM_RESUME_FILE) say which job asked for which node."""
    outcome = Outcome()
    config = svc.config
    by_pool, unknown = config.split_by_pool(nodes)
    if unknown:
        outcome.fail(unknown, Failure("no-pool", f"not in any pool of {config.source or 'the config'}", permanent=True))
    pending = {node: pool for pool, members in by_pool.items() for node in members}
    deadline = svc.clock() + config.timeouts.boot
    state = _Round()
    state.job_of = {node: job for job in group_by_job(list(pending), jobs) for node in job.nodes}
    timeout = Failure("timeout", "no server became ACTIVE in time")
    try:
        fleet = svc.fleet()
        while pending:
            booting = _place_round(pending, state, outcome, fleet, svc, deadline)
            for node in _release_broken_jobs(state, outcome, fleet, svc):
                booting.pop(node, None)
            pending = _wait(booting, state, outcome, fleet, svc, deadline)
            _move_whole_jobs(pending, state, outcome, fleet, svc)
            for node in list(pending):
                if svc.clock() >= deadline:
                    outcome.fail([node], state.verdict(node, timeout))
                    pending.pop(node)
            for node in _release_broken_jobs(state, outcome, fleet, svc):
                pending.pop(node, None)
    except Exception as exc:  # fail closed: no node may sit in POWERING_UP until ResumeTimeout
        svc.log.exception("resume.internal_error", error=str(exc))
        unserved = [n for n in nodes if n not in outcome.served and n not in outcome.failed]
        outcome.fail(unserved, internal_failure(exc))
    _report_to_slurm(outcome, svc)
    return outcome


# ---- placing: look, adopt, create ----------------------------------------------------------


def _place_round(pending: dict[str, str], state: _Round, outcome: Outcome, fleet: Fleet, svc: Services,
                 deadline: float) -> dict[str, _Booting]:
    booting: dict[str, _Booting] = {}
    with svc.locks(sorted(pending)):
        # The same one list per cloud also finds where the jobs' other allocated nodes run.
        others = sorted({n for node in pending for n in _job(node, state).others if n not in pending})
        sighting = fleet.find(sorted(pending) + others)
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
                state.where[node] = keep
            else:
                to_create[pool_name].append(node)
        fleet.delete(stale, why="replaced or duplicate")  # failures are logged; reconcile finds them again
        anchors = _anchors(pending, sighting, state)
        for pool_name, members in to_create.items():
            if svc.config.pools[pool_name].placement == "together":
                booting.update(_create_jobs(pool_name, members, anchors, state, outcome, fleet, svc, deadline))
            else:
                booting.update(_create_in_pool(pool_name, members, state, outcome, fleet, svc, deadline))
    return booting


def _job(node: str, state: _Round) -> JobNodes:
    return state.job_of.get(node) or JobNodes((node,))


def _anchors(pending: Mapping[str, str], sighting: Sighting, state: _Round) -> dict[str, str]:
    """Per job: the cloud where most of its nodes already run (adopted, served or booting in this
    run, or its other allocated nodes' servers)."""
    clouds: dict[str, list[str]] = defaultdict(list)
    for node, server in state.where.items():
        clouds[_job(node, state).key].append(server.cloud)
    for job in {_job(node, state).key: _job(node, state) for node in pending}.values():
        for other in job.others:
            keep, _ = placement.choose_server(sighting.of(other))
            if keep is not None:
                clouds[job.key].append(keep.cloud)
    return {key: cloud for key, found in clouds.items() if (cloud := anchor_of(found)) is not None}


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
    booting: dict[str, _Booting] = {}
    left = list(nodes)
    for entry in _cloud_order(pool_name, svc):
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
            state.where[node] = started[node].server
        for node, failure in failed.items():
            state.note(node, entry.cloud, failure)
        left = [n for n in left if n not in booting]
        if not left:
            break
    for node in left:  # every cloud of the pool tried, or the boot deadline passed
        outcome.fail([node], state.verdict(node, Failure("capacity", "no configured cloud could take it")))
    return booting


def _create_jobs(pool_name: str, nodes: list[str], anchors: Mapping[str, str], state: _Round, outcome: Outcome,
                 fleet: Fleet, svc: Services, deadline: float) -> dict[str, _Booting]:
    """`placement: together`: each job's nodes on one cloud, sized against the clouds' headroom
    before any create. A job whose create fails on its cloud (quota, capacity, anything) has its
    servers there deleted and moves as a whole to the next cloud that fits; a job that fits
    nowhere fails at once, its reason naming each cloud's limit."""
    pool = svc.config.pools[pool_name]
    order = _cloud_order(pool_name, svc)
    entries = {entry.cloud: entry for entry in order}
    booting: dict[str, _Booting] = {}
    jobs = regroup(nodes, state.job_of)
    while jobs:
        if svc.clock() >= deadline:
            for job in jobs:  # no create starts after the boot deadline
                for node in job.nodes:
                    outcome.fail([node], state.verdict(node, Failure("timeout", "deadline passed before a create")))
            break
        excluded = {job.key: set().union(*(state.tried[n] for n in job.nodes)) for job in jobs}
        wanted = {c for job in jobs for c in entries if c not in excluded[job.key]}
        room = {c: _headroom(entries[c], pool_name, pool, fleet, svc, state) for c in entries if c in wanted}
        decision = place_jobs(jobs, list(entries), room, anchors=anchors, excluded=excluded)
        by_key = {job.key: job for job in jobs}
        for key, clouds in decision.unplaceable.items():
            job = by_key[key]
            if clouds:
                svc.log.warning("resume.job_fits_nowhere", job=key, nodes=list(job.nodes), pool=pool_name,
                                room={c: h.nodes for c, h in clouds})
                failure = Failure(*fits_nowhere(job, clouds))
                for node in job.nodes:
                    outcome.fail([node], _with_tried(state, node, failure))
            else:
                for node in job.nodes:
                    outcome.fail([node], state.verdict(node, Failure("capacity", "no configured cloud could take it")))
        _cool_down_skipped(decision, by_key, room, list(entries), pool_name, svc)
        moved: list[JobNodes] = []
        for cloud in entries:
            here = [by_key[key] for key, placed in decision.placed.items() if placed == cloud]
            if here:
                started = _create_jobs_on(here, pool_name, entries[cloud], state, fleet, svc, deadline)
                booting.update(started)
                moved += [job for job in here if not all(n in started for n in job.nodes)]
        jobs = moved
    return booting


def _cool_down_skipped(decision: Decision, jobs: Mapping[str, JobNodes], room: Mapping[str, Headroom],
                      order: list[str], pool_name: str, svc: Services) -> None:
    """A cloud whose quota had no room for a job counts as a quota refusal for the pool (cool-down,
    as after a 403), though no create was sent to learn it."""
    now = svc.clock()
    for key, cloud in [*decision.placed.items(), *((k, None) for k in decision.unplaceable)]:
        for skipped in order[:order.index(cloud)] if cloud is not None else order:
            head = room.get(skipped)
            if head is not None and head.kind == "quota" and head.nodes is not None \
                    and head.nodes < len(jobs[key].nodes):
                svc.history.record_cloud_failure(skipped, pool_name, CloudErrorKind.QUOTA.value, now)


def _drop_group(job: JobNodes, pool_name: str, cloud: str, deleted: set[str], fleet: Fleet, svc: Services,
                state: _Round) -> None:
    """The job left `cloud`: its server group there goes too, unless it holds a server other than
    those just deleted (the job's nodes of an earlier run). A failure is logged: `elastic
    reconcile` deletes an empty group of ours later."""
    if job.job_id is None:
        return
    name = server_groups.group_name(svc.config.cluster, pool_name, job.job_id)
    group = state.groups.get(cloud, {}).get(name)
    if group is None:
        return
    guard = fleet.clouds[cloud]
    try:
        current = next((g for g in guard.list_server_groups() if g.id == group.id), None)
        if current is not None and set(current.members) <= deleted:
            guard.delete_server_group(group.id)
            svc.log.info("cloud.delete_server_group", cloud=cloud, group=name, id=group.id, why=f"{job.key} left")
        state.groups[cloud].pop(name, None)
    except CloudError as error:
        svc.log.warning("cloud.delete_server_group", cloud=cloud, group=name, ok=False, error=str(error))


def _with_tried(state: _Round, node: str, failure: Failure) -> Failure:
    """`failure`, with what the node's earlier clouds in this run said."""
    earlier = state.failures.get(node)
    if not earlier:
        return failure
    also = "; ".join(f"{f.kind} on {cloud}" for cloud, f in earlier.items())
    return Failure(failure.kind, f"{failure.message} (also {also})", failure.permanent)


def _create_jobs_on(jobs: list[JobNodes], pool_name: str, entry: PoolCloud, state: _Round, fleet: Fleet,
                    svc: Services, deadline: float) -> dict[str, _Booting]:
    """Create the jobs' servers on one cloud; a job with any node not created there leaves the
    cloud as a whole (its servers there deleted). Returns the jobs that stay."""
    pool = svc.config.pools[pool_name]
    groups: dict[str, str] = {}
    refused: dict[str, Failure] = {}  # job key -> its server group's failure
    if pool.server_group is not None:
        for job in jobs:
            if job.job_id is None:
                continue  # a node of no job needs no group
            try:
                group, state.groups[entry.cloud] = server_groups.find_or_create(
                    fleet.clouds[entry.cloud], state.groups.get(entry.cloud),
                    server_groups.group_name(svc.config.cluster, pool_name, job.job_id), pool.server_group)
            except CloudError as error:
                svc.log.warning("resume.server_group_failed", cloud=entry.cloud, job=job.key, error=str(error))
                _remember_problem(error, entry.cloud, pool_name, svc)
                refused[job.key] = failure_from(error)
                continue
            groups.update(dict.fromkeys(job.nodes, group.id))
    go = [n for job in jobs if job.key not in refused for n in job.nodes]
    started, failed = _create_on_cloud(pool_name, pool, entry, go, fleet, svc, deadline, groups)
    flavor = state.flavors.get((entry.cloud, pool.flavor_on(entry)))
    stay: dict[str, _Booting] = {}
    for job in jobs:
        made = [started[n] for n in job.nodes if n in started]
        _spend(state, entry.cloud, flavor, len(made))
        if job.key not in refused and len(made) == len(job.nodes):
            for node in job.nodes:
                stay[node] = started[node]
                state.tried[node].add(entry.cloud)
                state.where[node] = started[node].server
            continue
        # The job moves as a whole: what it got here is deleted, every node notes why.
        if made:
            fleet.delete([item.server for item in made], why=f"{job.key} moves off {entry.cloud}")
            _spend(state, entry.cloud, flavor, -len(made))
        _drop_group(job, pool_name, entry.cloud, {item.server.id for item in made}, fleet, svc, state)
        first = refused.get(job.key) or next(
            (failed[n] for n in job.nodes if n in failed),
            Failure("timeout", "boot deadline passed before its create"))
        culprit = next((n for n in job.nodes if n in failed), None)
        svc.log.warning("resume.job_moves", job=job.key, cloud=entry.cloud, kind=first.kind, node=culprit)
        for node in job.nodes:
            own = failed.get(node)
            state.note(node, entry.cloud, own or Failure(
                first.kind, f"{job.key} left {entry.cloud}: {culprit + ': ' if culprit else ''}{first.message}",
                permanent=first.permanent))
        if first.kind == CloudErrorKind.QUOTA.value and state.limits.get(entry.cloud) is not None:
            state.limits[entry.cloud] = _full(state.limits[entry.cloud])
    return stay


def _headroom(entry: PoolCloud, pool_name: str, pool: Pool, fleet: Fleet, svc: Services,
              state: _Round) -> Headroom:
    """The cloud's room for this pool now: its quota (read once per run), the pool's max_nodes."""
    cloud = fleet.clouds[entry.cloud]
    if entry.cloud not in state.limits:
        try:
            state.limits[entry.cloud] = with_retries(cloud.limits, sleep=svc.sleep)
        except CloudError as error:
            svc.log.warning("resume.limits_failed", cloud=entry.cloud, kind=error.kind.value, error=str(error))
            state.limits[entry.cloud] = None
    key = (entry.cloud, pool.flavor_on(entry))
    if key not in state.flavors:
        try:
            state.flavors[key] = with_retries(lambda: cloud.flavor(key[1]), sleep=svc.sleep)
        except CloudError as error:
            svc.log.warning("resume.flavor_failed", cloud=entry.cloud, kind=error.kind.value, error=str(error))
            state.flavors[key] = None
    return headroom(state.limits[entry.cloud], state.flavors[key], _room_on(entry, pool_name, fleet, svc))


def _spend(state: _Round, cloud: str, flavor: Flavor | None, count: int) -> None:
    """Keep the run's quota view current: `count` servers of `flavor` made (or, negative, deleted)."""
    limits = state.limits.get(cloud)
    if limits is None or count == 0:
        return
    vcpus, ram = (flavor.vcpus, flavor.ram) if flavor is not None else (0, 0)
    state.limits[cloud] = replace(limits, instances_used=limits.instances_used + count,
                                  cores_used=limits.cores_used + count * vcpus, ram_used=limits.ram_used + count * ram)


def _full(limits: Limits | None) -> Limits | None:
    """The cloud refused a create for quota though our read said there was room: count it full."""
    if limits is None:
        return None
    return replace(limits, instances=limits.instances_used)


def _cloud_order(pool_name: str, svc: Services) -> list[PoolCloud]:
    """The pool's clouds in its order; clouds that refused this pool lately (quota, capacity, a
    permanent error) or did not answer are tried last, for the cloud's cooldown."""
    pool = svc.config.pools[pool_name]
    now = svc.clock()
    problems = svc.history.problems()
    down = svc.history.clouds_down()
    later = [e.cloud for e in pool.clouds
             if svc.history.cooling_down(e.cloud, pool_name, now, svc.config.clouds[e.cloud].cooldown)
             or now - _problem_at(problems, e.cloud, pool_name) < svc.config.clouds[e.cloud].cooldown
             or e.cloud in down]
    return placement.cloud_order(pool, later)


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
                     svc: Services, deadline: float, server_groups: Mapping[str, str] | None = None,
                     ) -> tuple[dict[str, _Booting], dict[str, Failure]]:
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
        requests = {node: _boot_request(node, pool_name, pool, entry, target, svc,
                                        (server_groups or {}).get(node)) for node in nodes}
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
            started[node] = _Booting(result, pool_name, entry)
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
                  svc: Services, server_group: str | None = None) -> BootRequest:
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
        boot_volume_size=pool.boot.boot_volume_size, server_group=server_group,
    )


def _entry_for(pool: Pool, cloud: str) -> PoolCloud | None:
    return next((entry for entry in pool.clouds if entry.cloud == cloud), None)


# ---- waiting: one list per cloud per poll ---------------------------------------------------


def _wait(booting: dict[str, _Booting], state: _Round, outcome: Outcome, fleet: Fleet, svc: Services,
          deadline: float) -> dict[str, str]:
    """Poll until every booting node is served, cancelled or failed; return nodes to place again."""
    again: dict[str, str] = {}
    waiting = dict(booting)
    while waiting:
        served_now: dict[str, str] = {}
        try:
            pause = _poll_once(waiting, served_now, again, state, outcome, fleet, svc)
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
               outcome: Outcome, fleet: Fleet, svc: Services) -> float:
    """One list per cloud, the clouds in parallel; judge each waiting node, moving it out of
    `waiting` once decided. Returns how long to pause before the next poll."""
    by_cloud: dict[str, list[str]] = defaultdict(list)
    for node, item in waiting.items():
        by_cloud[item.server.cloud].append(node)
    pause = svc.config.timeouts.poll
    lost: dict[str, dict[str, str]] = {}
    for cloud_name, result in fleet.poll(by_cloud).items():
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


# ---- whole jobs ------------------------------------------------------------------------------


def _move_whole_jobs(again: dict[str, str], state: _Round, outcome: Outcome, fleet: Fleet, svc: Services) -> None:
    """`placement: together`: a node that must leave its cloud (its server went ERROR, the cloud
    was lost) takes the rest of its job along. The siblings' servers on that cloud are deleted,
    served or not (the job cannot start before all its nodes are up), and they are placed again
    with it; their new addresses reach Slurm when their new servers are ACTIVE."""
    for job in {_job(node, state).key: _job(node, state) for node in again}.values():
        pool_name = again[next(n for n in job.nodes if n in again)]
        if svc.config.pools[pool_name].placement != "together" or len(job.nodes) < 2:
            continue
        left = {list(state.failures[n])[-1] for n in job.nodes if n in again and state.failures.get(n)}
        siblings = [n for n in job.nodes if n not in again and n in outcome.served
                    and n in state.where and state.where[n].cloud in left]
        if not siblings:
            continue
        svc.log.warning("resume.job_moves", job=job.key, clouds=sorted(left), nodes=siblings)
        fleet.delete([state.where[n] for n in siblings], why=f"{job.key} moves off {', '.join(sorted(left))}")
        gone = {state.where[n].id for n in job.nodes if n in state.where}  # the ERROR ones were deleted too
        for cloud in left:
            _drop_group(job, pool_name, cloud, gone, fleet, svc, state)
        cause = next(n for n in job.nodes if n in again)
        for node in siblings:
            cloud = state.where.pop(node).cloud
            outcome.served.pop(node, None)
            state.note(node, cloud, Failure("moved", f"{job.key} left {cloud}: {cause} failed there"))
            again[node] = pool_name


def _release_broken_jobs(state: _Round, outcome: Outcome, fleet: Fleet, svc: Services) -> list[str]:
    """`all_or_nothing`: a job with a node that cannot be served releases its other servers at
    once (booting or served) and all its nodes fail with a reason naming the job, so Slurm
    requeues it (power_down_force: the nodes end idle~) and no quota waits for a job that cannot
    start. Returns the nodes released: the caller stops serving them."""
    released: list[str] = []
    jobs = {job.key: job for node, job in state.job_of.items() if job.job_id is not None}
    for job in jobs.values():
        bad = [n for n in job.nodes if n in outcome.failed]
        pool = svc.config.pool_of(job.nodes[0])
        if not bad or job.key in state.released or pool is None or not svc.config.pools[pool].all_or_nothing:
            continue
        state.released.add(job.key)
        others = [n for n in job.nodes if n not in outcome.failed]
        gone = {state.where[n].id for n in job.nodes if n in state.where}
        servers = [state.where.pop(n) for n in others if n in state.where]
        if servers:
            fleet.delete(servers, why=f"all_or_nothing: {job.key} cannot get all its nodes")
        for cloud in sorted(state.groups):
            _drop_group(job, pool, cloud, gone, fleet, svc, state)
        cause = outcome.failed[bad[0]]
        for node in bad:
            failure = outcome.failed[node]
            outcome.failed[node] = Failure(failure.kind, f"{job.key} (all_or_nothing): {failure.message}",
                                           permanent=failure.permanent)
        if others:
            svc.log.warning("resume.job_released", job=job.key, nodes=others, cause=bad[0], kind=cause.kind)
            outcome.fail(others, Failure("job", f"{job.key} (all_or_nothing): released: {bad[0]} failed: "
                                                f"{cause.kind}: {cause.message}"))
        released += others
    return released


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
