"""Pure decisions of job-aware placement: which of a pool's jobs goes to which cloud.

A job's nodes in one resume call are placed together (pool `placement: together`): the whole job
on one cloud, sized against that cloud's headroom (its quota from one `limits()` read per run, and
the pool's `max_nodes` there) before any create, largest job first, so a job that fits nowhere
fails at once instead of feeding a cloud a storm of creates that quota refuses. Nodes that no job
asked for (a manual power_up) are jobs of one node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from elastic.cloud import Flavor, Limits
from elastic.resume_request import ResumeJob


@dataclass(frozen=True)
class JobNodes:
    """The nodes of one job that this call resumes (one node for a node of no job)."""

    nodes: tuple[str, ...]
    job_id: int | None = None
    # The job's other allocated nodes (23.02+ nodes_alloc): where they run, this job's nodes join.
    others: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"job {self.job_id}" if self.job_id is not None else f"node {self.nodes[0]}"


def group_by_job(nodes: Sequence[str], jobs: Iterable[ResumeJob]) -> list[JobNodes]:
    """The nodes grouped by the job that asked for them, in the order of `nodes`.

    Only nodes in `nodes` count (argv is authoritative); a node named by two jobs (shared nodes)
    belongs to the first; a node of no job is a job of its own.
    """
    wanted = dict.fromkeys(nodes)
    jobs = list(jobs)
    owner: dict[str, ResumeJob] = {}
    for job in jobs:
        for node in job.nodes:
            if node in wanted:
                owner.setdefault(node, job)
    groups: dict[int | str, list[str]] = {}
    for node in wanted:
        asked = owner.get(node)
        groups.setdefault(asked.job_id if asked is not None else node, []).append(node)
    result: list[JobNodes] = []
    by_id = {job.job_id: job for job in reversed(jobs)}  # the first of a repeated id wins
    for key, members in groups.items():
        if isinstance(key, int):
            job = by_id[key]
            others = tuple(n for n in job.nodes_alloc if n not in wanted)
            result.append(JobNodes(tuple(members), key, others))
        else:
            result.append(JobNodes(tuple(members)))
    return result


def regroup(nodes: Iterable[str], job_of: Mapping[str, JobNodes]) -> list[JobNodes]:
    """The jobs of `nodes` restricted to them (a job's other nodes may be adopted or already
    decided), in first-seen order."""
    picked: dict[str, list[str]] = {}
    jobs: dict[str, JobNodes] = {}
    for node in nodes:
        job = job_of.get(node) or JobNodes((node,))
        picked.setdefault(job.key, []).append(node)
        jobs[job.key] = job
    return [JobNodes(tuple(members), jobs[key].job_id, jobs[key].others) for key, members in picked.items()]


@dataclass(frozen=True)
class Headroom:
    """How many more of a pool's servers one cloud takes now; None: unknown (the creates will tell)."""

    nodes: int | None
    why: str = ""  # the limit that binds, for the reason of a job that fits nowhere
    kind: str = "quota"  # "quota" (the project's quota binds) or "limit" (the pool's max_nodes)


def headroom(limits: Limits | None, flavor: Flavor | None, room: int | None) -> Headroom:
    """A cloud's headroom for one pool: the tightest of its instance, core and RAM quota (a limit
    below 0 is Nova's "unlimited") in servers of the pool's flavor, and the pool's max_nodes room."""
    bounds: list[tuple[int, str, str]] = []
    if limits is not None:
        if limits.instances >= 0:
            bounds.append((limits.instances - limits.instances_used,
                           f"instances {limits.instances_used} of {limits.instances} used", "quota"))
        if flavor is not None and flavor.vcpus > 0 and limits.cores >= 0:
            bounds.append(((limits.cores - limits.cores_used) // flavor.vcpus,
                           f"cores {limits.cores_used} of {limits.cores} used, {flavor.vcpus} per node", "quota"))
        if flavor is not None and flavor.ram > 0 and limits.ram >= 0:
            bounds.append(((limits.ram - limits.ram_used) // flavor.ram,
                           f"RAM {limits.ram_used} of {limits.ram} MB used, {flavor.ram} MB per node", "quota"))
    if room is not None:
        bounds.append((room, "max_nodes reached" if room <= 0 else f"max_nodes leaves {room}", "limit"))
    if not bounds:
        return Headroom(None)
    count, why, kind = min(bounds, key=lambda bound: bound[0])
    return Headroom(max(count, 0), why, kind)


@dataclass
class Decision:
    placed: dict[str, str] = field(default_factory=dict)  # job key -> cloud
    # job key -> (cloud, its headroom) of every cloud it could still try; empty: none left to try
    unplaceable: dict[str, list[tuple[str, Headroom]]] = field(default_factory=dict)


def place_jobs(jobs: Sequence[JobNodes], order: Sequence[str], room: Mapping[str, Headroom], *,
               anchors: Mapping[str, str] | None = None,
               excluded: Mapping[str, Iterable[str]] | None = None) -> Decision:
    """Each job to one cloud where all its nodes fit, or unplaceable.

    Largest job first (a small job must not take the room a large one needed), equal sizes in the
    given order. A job tries its anchor first (the cloud its other nodes run on), then the clouds
    in `order` (the pool's order, clouds in cool-down last), the first that fits winning; clouds
    in `excluded[job]` (tried in this run) are skipped. A cloud missing from `room` or with
    unknown headroom is tried: its creates will tell.
    """
    anchors = anchors or {}
    excluded = excluded or {}
    left = {cloud: head.nodes for cloud, head in room.items()}
    decision = Decision()
    for job in sorted(jobs, key=lambda j: -len(j.nodes)):
        skip = set(excluded.get(job.key, ()))
        candidates = [cloud for cloud in order if cloud not in skip]
        anchor = anchors.get(job.key)
        if anchor in candidates:
            candidates = [anchor] + [cloud for cloud in candidates if cloud != anchor]
        for cloud in candidates:
            free = left.get(cloud)
            if free is None or free >= len(job.nodes):
                decision.placed[job.key] = cloud
                if free is not None:
                    left[cloud] = free - len(job.nodes)
                break
        else:
            decision.unplaceable[job.key] = [(cloud, room.get(cloud, Headroom(None))) for cloud in candidates]
    return decision


def anchor_of(clouds: Iterable[str]) -> str | None:
    """Where a job's nodes already run: the cloud holding most of them (the first on a tie)."""
    counts = Counter(clouds)
    if not counts:
        return None
    return counts.most_common(1)[0][0]


def fits_nowhere(job: JobNodes, clouds: Sequence[tuple[str, Headroom]]) -> tuple[str, str]:
    """The kind and reason for a job that no cloud has room for, naming each cloud's binding
    limit: "limit" when only the pool's max_nodes stood in the way, else "quota"."""
    what = f"{job.key} needs {len(job.nodes)} nodes" if job.job_id is not None else "no room"
    kind = "limit" if all(head.kind == "limit" for _, head in clouds) else "quota"
    return kind, f"{what}; " + "; ".join(f"{cloud}: room for {head.nodes} ({head.why})" for cloud, head in clouds)
