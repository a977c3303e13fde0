"""`elastic status`: one row per node of every pool (one per server when a node has several), with
Slurm's view and the cloud's side by side, and the mismatches between them flagged.

Mismatches (a problem on a row):

- orphan: a live server whose node Slurm does not count as powered up. A node Slurm does not show
  counts as powered down: 22.05 hides powered-down CLOUD nodes unless PrivateData=cloud, and a
  node missing from slurm.conf cannot run a job either.
- missing: a node Slurm counts as powered up (IDLE+CLOUD, ALLOCATED+CLOUD, DOWN+CLOUD, ...) that
  has no live server. A POWERING_UP node without one is not flagged: a resume is running or about
  to (slurmctld starts it after setting the state), and Slurm itself ends a stuck one at
  ResumeTimeout (down~, then ResumeFailProgram). Slurm shows no age for the state, so we could not
  tell a slow resume from a dead one.
- duplicate: more than one live server for one node that is powered up.

- pending: a server a suspend or resume-fail could not delete because its cloud did not answer
  (History's pending deletes); reconcile deletes it at once, with no grace period.

A cloud that does not answer is reported on its own line; a node whose pool uses it is not judged
missing (its server may be there), and its other clouds' servers are judged as usual.
A POWERING_DOWN node is never flagged: its SuspendProgram is deleting, with or without a server.
POWER_UP and POWER_DOWN (a power change requested, not yet started) count as POWERING_UP and
POWERING_DOWN.
Servers being deleted are shown but never count as live.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from elastic.admin.table import duration, format_table
from elastic.cloud import Server
from elastic.config import Config
from elastic.errors import CloudError, SlurmError
from elastic.fleet import Fleet
from elastic.history import HistoryView, PendingDelete, Problem
from elastic.hostlists import compress
from elastic.slurm import NodeState

ORPHAN = "orphan"
MISSING = "missing"
DUPLICATE = "duplicate"
PENDING = "pending"

PROBLEM_TEXT = {
    ORPHAN: "orphan: server without a powered-up node",
    MISSING: "missing: powered-up node without a server",
    DUPLICATE: "duplicate: several servers for one node",
    PENDING: "pending: its delete failed earlier (cloud did not answer)",
}


class SlurmNodes(Protocol):
    """What status reads from slurmctld (elastic.slurm.Slurm)."""

    def nodes(self, names: Iterable[str] | None = None) -> Mapping[str, NodeState]: ...


@dataclass(frozen=True)
class Snapshot:
    """What the clouds and Slurm said, read once."""

    servers: tuple[Server, ...]
    nodes: Mapping[str, NodeState] | None  # None: Slurm could not be asked
    slurm_error: str | None = None
    unseen: Mapping[str, CloudError] = field(default_factory=dict)  # clouds that did not answer
    pending: Mapping[str, Mapping[str, PendingDelete]] = field(default_factory=dict)  # node -> cloud -> entry


@dataclass(frozen=True)
class Row:
    node: str
    pool: str | None  # None: the node is in no pool of the YAML (a pool was removed or shrunk)
    slurm: NodeState | None  # None: Slurm does not show the node, or Slurm is unknown
    server: Server | None
    problem: str | None = None
    note: str = ""
    blind: tuple[str, ...] = ()  # clouds of the node's scope that did not answer: it may have a server there

    @property
    def address(self) -> str | None:
        if self.server is None:
            return None
        return self.server.floating_address() or self.server.fixed_address()

    def age(self, now: float) -> float | None:
        if self.server is None or self.server.created is None:
            return None
        return now - self.server.created

    def to_json(self, now: float, slurm_known: bool, extra: Extra | None = None) -> dict[str, Any]:
        server = None
        if self.server is not None:
            age = self.age(now)
            server = {"id": self.server.id, "status": self.server.status, "cloud": self.server.cloud,
                      "task_state": self.server.task_state, "address": self.address,
                      "created": self.server.created, "age_seconds": None if age is None else round(age, 1)}
        return {
            "node": self.node, "pool": self.pool,
            "slurm_state": self.slurm.state if self.slurm else (None if slurm_known else "unknown"),
            "reason": self.slurm.reason if self.slurm and self.slurm.reason else None,
            "slurm_address": self.slurm.addr if self.slurm and self.slurm.addr else None,
            "server": server, "problem": self.problem, "note": self.note or None,
            "jobs": (extra or Extra()).jobs_of(self), "server_group": (extra or Extra()).group_of(self),
        }


@dataclass(frozen=True)
class Extra:
    """What status shows beside the rows when it could read it: the jobs holding each node (from
    Slurm) and the server group of each server (from the clouds of pools that use groups)."""

    jobs: Mapping[str, Sequence[int]] | None = None  # node -> job ids; None: not read
    groups: Mapping[str, str] | None = None  # server id -> group name; None: no pool uses groups

    def jobs_of(self, row: Row) -> list[int] | None:
        return list(self.jobs.get(row.node, [])) if self.jobs is not None else None

    def group_of(self, row: Row) -> str | None:
        if self.groups is None or row.server is None:
            return None
        return self.groups.get(row.server.id)


def group_names(config: Config, fleet: Fleet) -> dict[str, str] | None:
    """Server id -> the name of its server group, on the clouds of pools with `server_group`
    (None when no pool uses groups). A cloud that cannot list its groups shows none."""
    clouds = sorted({e.cloud for pool in config.pools.values() if pool.server_group for e in pool.clouds
                     if e.cloud in fleet.clouds})
    if not clouds:
        return None
    names: dict[str, str] = {}
    for result in fleet.each_cloud({c: fleet.clouds[c].list_server_groups for c in clouds}).values():
        if not isinstance(result, CloudError):
            names.update({member: group.name for group in result for member in group.members})
    return names


def wants_server(state: NodeState | None) -> bool | None:
    """True when Slurm counts the node as powered up, False when powered down (or not shown),
    None when either is normal (powering down: its SuspendProgram is running)."""
    if state is None:
        return False
    # POWER_UP / POWER_DOWN are requests (scontrol update state=power_up/power_down[_force])
    # waiting for slurmctld's next power-save pass: treat them like the transition they start.
    if state.powering_up or "POWER_UP" in state.flags:
        return True
    if state.powering_down or "POWER_DOWN" in state.flags:
        return None
    return not state.powered_down


def rows(config: Config, servers: Iterable[Server], slurm_nodes: Mapping[str, NodeState] | None, *,
         pools: Sequence[str] | None = None, unseen: Collection[str] = (),
         pending: Mapping[str, Mapping[str, PendingDelete]] | None = None) -> list[Row]:
    """The status rows, pools in YAML order, then servers of nodes that are in no pool.

    `slurm_nodes` None means Slurm could not be asked: only duplicates can be judged then.
    `unseen`: clouds that did not answer; `pending`: History's pending deletes.
    """
    pending = pending or {}
    selected = list(pools) if pools is not None else list(config.pools)
    by_node: dict[str, list[Server]] = defaultdict(list)
    for server in servers:
        by_node[server.name].append(server)
    out: list[Row] = []
    for pool_name in selected:
        blind = [entry.cloud for entry in config.pools[pool_name].clouds if entry.cloud in unseen]
        for node in config.pools[pool_name].node_names:
            out.extend(node_rows(node, pool_name, by_node.get(node, []), slurm_nodes, blind=blind,
                                 pending=pending.get(node)))
    for node in sorted(by_node):
        if config.pool_of(node) is not None:
            continue
        if pools is not None and not any(s.pool in selected for s in by_node[node]):
            continue
        out.extend(node_rows(node, None, by_node[node], slurm_nodes, blind=list(unseen), pending=pending.get(node)))
    return out


def node_rows(node: str, pool: str | None, servers: Sequence[Server],
              slurm_nodes: Mapping[str, NodeState] | None, *, blind: Sequence[str] = (),
              pending: Mapping[str, PendingDelete] | None = None) -> list[Row]:
    """One node's rows. `blind`: clouds of its scope that did not answer; `pending`: cloud ->
    entry of its pending deletes."""
    state = slurm_nodes.get(node) if slurm_nodes is not None else None
    pending = pending or {}
    condemned = [s for s in servers if not s.deleting and s.cloud in pending]
    live = [s for s in servers if not s.deleting and s.cloud not in pending]
    want = wants_server(state) if slurm_nodes is not None else None
    problem: str | None = None
    notes = []
    if want is False and live:
        problem = ORPHAN
    elif len(live) > 1 and (want is True or slurm_nodes is None):
        problem = DUPLICATE
    elif want is True and not live:
        if state is not None and (state.powering_up or "POWER_UP" in state.flags):
            notes.append("resume running: no server yet")
        elif blind:
            notes.append(f"server unknown: {', '.join(blind)} not answering")
        else:
            problem = MISSING
    waiting = sorted(c for c in pending if c in blind)
    if waiting:
        notes.append(f"delete pending on {', '.join(waiting)} (not answering)")
    note = "; ".join(notes)
    if not servers:
        return [Row(node, pool, state, None, problem, note, tuple(blind))]
    ordered = sorted(servers, key=lambda s: (s.deleting, -(s.created or 0.0), s.cloud, s.id))
    return [Row(node, pool, state, server,
                PENDING if server in condemned else (None if server.deleting and problem != MISSING else problem),
                "deleting" if server.deleting else note, tuple(blind))
            for server in ordered]


def collect(config: Config, fleet: Fleet, slurm: SlurmNodes | None, names: Iterable[str] | None = None, *,
            need_slurm: bool = False, pending: Mapping[str, Mapping[str, PendingDelete]] | None = None,
            also: Mapping[str, Iterable[str]] | None = None) -> Snapshot:
    """List our servers on the clouds, in parallel (a cloud that does not answer is reported in
    `unseen`), then ask Slurm. `also`: {cloud: nodes} looked for outside their scopes (Fleet.find).

    Servers are read before Slurm: a node whose resume starts between the two reads is POWERING_UP
    by the time Slurm is read, so its new server is never judged against a stale powered-down state.
    """
    wanted = sorted(set(names)) if names is not None else None
    sighting = fleet.find(wanted, also)
    servers = tuple(s for found in sighting.servers.values() for s in found)
    pending = {node: dict(entry) for node, entry in (pending or {}).items() if wanted is None or node in wanted}
    if slurm is None:
        return Snapshot(servers, None, "no Slurm", sighting.unseen, pending)
    try:
        nodes = slurm.nodes(wanted)
    except SlurmError as error:
        if need_slurm:
            raise
        return Snapshot(servers, None, str(error), sighting.unseen, pending)
    return Snapshot(servers, nodes, None, sighting.unseen, pending)


def render(table_rows: Sequence[Row], now: float, *, slurm_known: bool, extra: Extra | None = None) -> str:
    """The table; JOB and GROUP columns only when Slurm's jobs were read and a pool uses groups."""
    extra = extra or Extra()
    body = []
    for row in table_rows:
        if row.slurm is not None:
            slurm_state = row.slurm.state
        else:
            slurm_state = "(not shown)" if slurm_known else "?"
        server = row.server
        status = None
        if server is not None:
            status = server.status + ("/deleting" if server.deleting else "")
        problem = PROBLEM_TEXT[row.problem] if row.problem else ""
        if row.note and row.note != "deleting":
            problem = f"{problem}; {row.note}" if problem else row.note
        cells = [row.node, row.pool, slurm_state, row.slurm.reason if row.slurm else None, status,
                 server.cloud if server else None, row.address, duration(row.age(now))]
        if extra.jobs is not None:
            cells.append(",".join(str(job) for job in extra.jobs_of(row) or []) or None)
        if extra.groups is not None:
            cells.append(extra.group_of(row))
        body.append([*cells, problem])
    header = ["NODE", "POOL", "SLURM", "REASON", "SERVER", "CLOUD", "ADDRESS", "AGE"]
    header += ["JOB"] if extra.jobs is not None else []
    header += ["GROUP"] if extra.groups is not None else []
    return format_table([*header, "PROBLEM"], body)


def summary(table_rows: Sequence[Row]) -> str:
    counts: dict[str, set[str]] = defaultdict(set)
    for row in table_rows:
        if row.problem:
            counts[row.problem].add(row.node)
    nodes = len({row.node for row in table_rows})
    servers = sum(1 for row in table_rows if row.server is not None and not row.server.deleting)
    if not counts:
        return f"{nodes} nodes, {servers} live servers, no mismatches"
    found = ", ".join(f"{len(counts[k])} {k}" for k in (ORPHAN, MISSING, DUPLICATE, PENDING) if counts[k])
    return f"{nodes} nodes, {servers} live servers; mismatches: {found} (elastic reconcile shows the repairs)"


def pool_problems(problems: Mapping[str, Mapping[str, Problem]],
                  pools: Collection[str] | None) -> dict[str, dict[str, Problem]]:
    """History's {cloud: {pool: problem}} for these pools only (every pool's with `pools` None),
    without the clouds that have none left."""
    kept = {cloud: {pool: entry for pool, entry in by_pool.items() if pools is None or pool in pools}
            for cloud, by_pool in problems.items()}
    return {cloud: by_pool for cloud, by_pool in kept.items() if by_pool}


def cloud_lines(config: Config, unseen: Mapping[str, str], history: HistoryView | None, now: float, *,
                pools: Collection[str] | None = None,
                pending: Mapping[str, Mapping[str, PendingDelete]] | None = None) -> list[str]:
    """One line per cloud that needs an admin's eye: not listed now (`unseen`: cloud -> why, with
    the fix), not answering since an earlier run, a pool's permanent error on it, deletes pending.
    With `pools`, only those pools' problems; `pending`: the pending deletes to show (default: all
    of History's; `--pool` gives those of its nodes, as `collect` keeps them)."""
    down = history.clouds_down() if history is not None else {}
    problems = pool_problems(history.problems(), pools) if history is not None else {}
    if pending is None:
        pending = history.pending_deletes() if history is not None else {}
    lines = []
    for cloud in config.clouds:
        parts = []
        if cloud in unseen:
            since = down[cloud]["since"] if cloud in down else None
            parts.append(f"cannot be listed{f' (not answering for {duration(now - since)})' if since else ''}: "
                         f"{unseen[cloud]}")
        for pool, entry in sorted(problems.get(cloud, {}).items()):
            parts.append(f"pool {pool}: {entry['kind']}: {entry['error']} ({duration(now - entry['at'])} ago)")
        waiting = sorted(node for node, clouds in pending.items() if cloud in clouds)
        if waiting:
            parts.append(f"{len(waiting)} delete(s) pending: {compress(waiting)}")
        if parts:
            lines.append(f"cloud {cloud}: " + "; ".join(parts))
    return lines
