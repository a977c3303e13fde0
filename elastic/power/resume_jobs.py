"""Job-aware resume (pool `placement: together`, `all_or_nothing`, `server_group`).

The decisions are pure (power/job_placement.py); here they meet the clouds: headroom read once per
cloud per run, whole jobs created on the cloud chosen for them, a job that fails anywhere on its
cloud moved off it as a whole (its servers there and its server group deleted), and a job that
cannot get all its nodes released at once when its pool says all_or_nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

from elastic.cloud import Flavor, Limits
from elastic.config import Pool, PoolCloud
from elastic.errors import CloudError, CloudErrorKind
from elastic.fleet import Fleet, Sighting
from elastic.power import placement, server_groups
from elastic.power.create import Booting, RunState, cloud_order, create_on_cloud, remember_problem, room_on
from elastic.power.job_placement import (
    Decision,
    Headroom,
    JobNodes,
    anchor_of,
    fits_nowhere,
    headroom,
    place_jobs,
    regroup,
)
from elastic.power.outcome import Failure, Outcome, failure_from
from elastic.power.services import Services
from elastic.retry import with_retries


def job_of_node(node: str, state: RunState) -> JobNodes:
    return state.job_of.get(node) or JobNodes((node,))


def anchors_of(pending: Mapping[str, str], sighting: Sighting, state: RunState) -> dict[str, str]:
    """Per job: the cloud where most of its nodes already run (adopted, served or booting in this
    run, or its other allocated nodes' servers)."""
    clouds: dict[str, list[str]] = defaultdict(list)
    for node, server in state.where.items():
        clouds[job_of_node(node, state).key].append(server.cloud)
    for job in {job_of_node(node, state).key: job_of_node(node, state) for node in pending}.values():
        for other in job.others:
            keep, _ = placement.choose_server(sighting.of(other))
            if keep is not None:
                clouds[job.key].append(keep.cloud)
    return {key: cloud for key, found in clouds.items() if (cloud := anchor_of(found)) is not None}


def create_jobs(pool_name: str, nodes: list[str], anchors: Mapping[str, str], state: RunState, outcome: Outcome,
                fleet: Fleet, svc: Services, deadline: float) -> dict[str, Booting]:
    """`placement: together`: each job's nodes on one cloud, sized against the clouds' headroom
    before any create. A job whose create fails on its cloud (quota, capacity, anything) has its
    servers there deleted and moves as a whole to the next cloud that fits; a job that fits
    nowhere fails at once, its reason naming each cloud's limit."""
    pool = svc.config.pools[pool_name]
    order = cloud_order(pool_name, svc)
    entries = {entry.cloud: entry for entry in order}
    booting: dict[str, Booting] = {}
    jobs = regroup(nodes, state.job_of)
    while jobs:
        if svc.clock() >= deadline:
            for job in jobs:  # no create starts after the boot deadline
                for node in job.nodes:
                    outcome.fail([node], state.verdict(node, Failure("timeout", "deadline passed before a create")))
            break
        excluded = {job.key: set().union(*(state.tried[n] for n in job.nodes)) for job in jobs}
        wanted = {c for job in jobs for c in entries if c not in excluded[job.key]}
        # Quota matters where a job could be split by it. Jobs of one node (a manual power_up, nodes
        # of no job, one-node jobs) go where the pool's order says, as with `spread`: one that does
        # not fit is refused by Nova (403) and tries the next cloud, so the two requests of a quota
        # read (limits, flavor) are not worth it.
        read_quota = any(len(job.nodes) > 1 for job in jobs)
        room = {c: _headroom(entries[c], pool_name, pool, fleet, svc, state, read_quota=read_quota)
                for c in entries if c in wanted}
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
                state: RunState) -> None:
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


def _with_tried(state: RunState, node: str, failure: Failure) -> Failure:
    """`failure`, with what the node's earlier clouds in this run said."""
    earlier = state.failures.get(node)
    if not earlier:
        return failure
    also = "; ".join(f"{f.kind} on {cloud}" for cloud, f in earlier.items())
    return Failure(failure.kind, f"{failure.message} (also {also})", failure.permanent)


def _create_jobs_on(jobs: list[JobNodes], pool_name: str, entry: PoolCloud, state: RunState, fleet: Fleet,
                    svc: Services, deadline: float) -> dict[str, Booting]:
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
                remember_problem(error, entry.cloud, pool_name, svc)
                refused[job.key] = failure_from(error)
                continue
            groups.update(dict.fromkeys(job.nodes, group.id))
    go = [n for job in jobs if job.key not in refused for n in job.nodes]
    started, failed = create_on_cloud(pool_name, pool, entry, go, fleet, svc, deadline, groups)
    flavor = state.flavors.get((entry.cloud, pool.flavor_on(entry)))
    stay: dict[str, Booting] = {}
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
              state: RunState, *, read_quota: bool = True) -> Headroom:
    """The cloud's room for this pool now: its quota (read once per run, and only when
    `read_quota`: unknown otherwise unless read earlier in the run), the pool's max_nodes."""
    cloud = fleet.clouds[entry.cloud]
    key = (entry.cloud, pool.flavor_on(entry))
    if not read_quota:
        return headroom(state.limits.get(entry.cloud), state.flavors.get(key), room_on(entry, pool_name, fleet, svc))
    if entry.cloud not in state.limits:
        try:
            state.limits[entry.cloud] = with_retries(cloud.limits, sleep=svc.sleep)
        except CloudError as error:
            svc.log.warning("resume.limits_failed", cloud=entry.cloud, kind=error.kind.value, error=str(error))
            state.limits[entry.cloud] = None
    if key not in state.flavors:
        try:
            state.flavors[key] = with_retries(lambda: cloud.flavor(key[1]), sleep=svc.sleep)
        except CloudError as error:
            svc.log.warning("resume.flavor_failed", cloud=entry.cloud, kind=error.kind.value, error=str(error))
            state.flavors[key] = None
    return headroom(state.limits[entry.cloud], state.flavors[key], room_on(entry, pool_name, fleet, svc))


def _spend(state: RunState, cloud: str, flavor: Flavor | None, count: int) -> None:
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


# ---- whole jobs ------------------------------------------------------------------------------


def move_whole_jobs(again: dict[str, str], state: RunState, outcome: Outcome, fleet: Fleet, svc: Services) -> None:
    """`placement: together`: a node that must leave its cloud (its server went ERROR, the cloud
    was lost) takes the rest of its job along. The siblings' servers on that cloud are deleted,
    served or not (the job cannot start before all its nodes are up), and they are placed again
    with it; their new addresses reach Slurm when their new servers are ACTIVE."""
    for job in {job_of_node(node, state).key: job_of_node(node, state) for node in again}.values():
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


def release_broken_jobs(state: RunState, outcome: Outcome, fleet: Fleet, svc: Services) -> list[str]:
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
        # A node a suspend took back (cancelled) is that suspend's: powered down, its server gone.
        others = [n for n in job.nodes if n not in outcome.failed and n not in outcome.cancelled]
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
