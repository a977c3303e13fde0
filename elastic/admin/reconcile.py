"""`elastic reconcile`: the repairs for the mismatches `elastic status` flags, applied on request.

- orphan: delete the server, once it is older than `reconcile.grace`, so a server a resume has just
  created is never taken for one.
- duplicate: keep one server and delete the others (older than the grace period). The kept one is
  the ACTIVE server whose address Slurm already has, else the newest ACTIVE, else the newest
  BUILD, as a resume would adopt.
- missing: `power_down_force` the node with an `elastic:` reason. Its jobs are requeued now (the
  server is gone, so they are too) and the node returns to idle~.
- stranded: a node that ResumeTimeout left `down~` with Slurm's own reason, whose ResumeFailProgram
  never finished (killed, or it crashed before Slurm heard from it): `down~` never recovers by
  itself, so `scontrol update state=resume` returns it to idle~ as that ResumeFailProgram would
  have. A server it left is an orphan (or a pending delete): the node is resumed in the same pass
  once every such delete was accepted (a resume never adopts a server being deleted). While one
  of them waits for the grace period or a delete fails, the node stays `down~` for the next pass.
  A cloud of the node's pool that does not answer gets a pending delete for the node first: no
  resume adopts a server left there, and the node boots on the pool's other clouds meanwhile.
  (It counts no failure toward `resume_fail.max_failures`: reconcile cannot tell whether the
  killed run counted it already.)
- pending: delete the server at once (no grace period: a suspend or resume-fail already meant to
  delete it when its cloud did not answer), then forget the pending delete; a pending delete on
  a cloud that answers and shows no server for the node is forgotten.

Applying re-reads each node's servers and Slurm state under the node's lock (the lock resume and
suspend take) and carries out only the repairs the fresh look still asks for: between the first
look and the lock a resume may have started (POWERING_UP) and adopted the very server we saw
idle. A node whose lock another run holds is skipped until the next pass.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Protocol, cast

from structlog.typing import FilteringBoundLogger

from elastic.admin import status
from elastic.admin.table import duration, format_table
from elastic.cloud import ACTIVE, FloatingIp, Server, ServerGroup
from elastic.config import Config
from elastic.errors import CloudError, SlurmError
from elastic.fleet import Fleet
from elastic.history import UNDER_WAY, PendingDelete
from elastic.power import placement, server_groups
from elastic.retry import with_retries
from elastic.slurm import NodeState

DELETE = "delete"
POWER_DOWN = "power_down"
FORGET = "forget"
RESUME = "resume"
REASON = "elastic: reconcile: server vanished"
STRANDED = "stranded"
# The reason slurmctld gives a node it set down~ at ResumeTimeout (power_save.c, 22.05 to 26.05).
RESUME_TIMEOUT_REASON = "ResumeTimeout reached"


class SlurmRepairs(status.SlurmNodes, Protocol):
    """What reconcile reads from slurmctld and changes there (elastic.slurm.Slurm)."""

    def set_state(self, names: Sequence[str], state: str, reason: str | None = None) -> None: ...


class PendingMemory(Protocol):
    """The pending deletes of the history (elastic.history.History)."""

    def pending_deletes(self) -> Mapping[str, Mapping[str, PendingDelete]]: ...
    def add_pending_deletes(self, entries: dict[str, dict[str, str]], now: float) -> None: ...
    def clear_pending_deletes(self, node_clouds: dict[str, list[str]]) -> None: ...


@dataclass(frozen=True)
class Repair:
    action: str  # DELETE, POWER_DOWN, RESUME or FORGET
    node: str
    problem: str  # the status mismatch this repairs
    server: Server | None = None
    wait: str = ""  # why it is not due yet; empty when it may be applied
    cloud: str | None = None  # FORGET: the cloud whose pending delete is settled
    after: tuple[str, ...] = ()  # RESUME: the ids of the node's servers whose deletes must be accepted first
    # RESUME: the clouds of the node's pool that did not answer; a pending delete is recorded on each first
    pending_on: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.wait

    @property
    def key(self) -> tuple[str, str, str | None, str | None, tuple[str, ...], tuple[str, ...]]:
        return self.action, self.node, self.server.id if self.server else None, self.cloud, self.after, self.pending_on


@dataclass
class Result:
    done: list[Repair] = field(default_factory=list)
    failed: list[tuple[Repair, str]] = field(default_factory=list)
    skipped: list[tuple[Repair, str]] = field(default_factory=list)


def plan(table_rows: Iterable[status.Row], now: float, grace: float, *,
         pending: Mapping[str, Mapping[str, PendingDelete]] | None = None,
         unseen: Collection[str] = ()) -> list[Repair]:
    """The repairs for the flagged rows, in row order; those not due yet carry `wait`.
    `pending`: History's pending deletes; `unseen`: clouds that did not answer.

    A stranded node's RESUME comes after its DELETEs and names their servers in `after`: apply
    resumes it only when every one of those deletes was accepted."""
    by_node: dict[str, list[status.Row]] = defaultdict(list)
    for row in table_rows:
        by_node[row.node].append(row)
    repairs: list[Repair] = []
    for node, node_rows in by_node.items():
        first = len(repairs)
        condemned = [row.server for row in node_rows if row.problem == status.PENDING and row.server is not None]
        repairs.extend(Repair(DELETE, node, status.PENDING, server) for server in condemned)
        for cloud in sorted((pending or {}).get(node, {})):
            if cloud not in unseen and not any(s.cloud == cloud for s in condemned):
                repairs.append(Repair(FORGET, node, status.PENDING, cloud=cloud))
        problem = next((row.problem for row in node_rows if row.problem and row.problem != status.PENDING), None)
        live = [row.server for row in node_rows if row.server is not None and not row.server.deleting
                and row.problem != status.PENDING]
        if problem == status.ORPHAN:
            repairs.extend(_delete(node, problem, server, now, grace) for server in live)
        elif problem == status.DUPLICATE:
            slurm = node_rows[0].slurm
            keep = keep_of(live, slurm.addr if slurm else None)
            repairs.extend(_delete(node, problem, server, now, grace) for server in live if server is not keep)
        elif problem == status.MISSING:
            repairs.append(Repair(POWER_DOWN, node, problem))
        if stranded(node_rows[0].slurm):
            resume = _stranded_resume(node, node_rows, repairs[first:])
            if resume is not None:
                repairs.append(resume)
    return repairs


def _stranded_resume(node: str, node_rows: Sequence[status.Row], node_repairs: Sequence[Repair]) -> Repair | None:
    """The RESUME of a stranded node, or None while it must wait for a later pass. Each server seen
    must be being deleted already or deleted by this plan (the RESUME waits with the deletes that
    wait); with none it is due at once. A cloud of the node's pool that did not answer may hold one
    of its servers: the RESUME records a pending delete there first (`pending_on`), so no resume
    adopts that server (its slurmd predates the power-up) and the node can boot on the pool's
    other clouds meanwhile, instead of staying down~ for the whole outage."""
    servers = [row.server for row in node_rows if row.server is not None]
    blind = tuple(sorted(node_rows[0].blind))
    if not servers:
        return Repair(RESUME, node, STRANDED, pending_on=blind)
    deletes = [r for r in node_repairs if r.action == DELETE and r.server is not None]
    doomed = {cast(Server, r.server).id for r in deletes}
    if not all(server.deleting or server.id in doomed for server in servers):
        return None
    waits = [r.wait for r in deletes if r.wait]
    wait = f"its server's delete waits: {waits[0]}" if waits else ""
    return Repair(RESUME, node, STRANDED, wait=wait, after=tuple(sorted(doomed)), pending_on=blind)


def stranded(state: NodeState | None) -> bool:
    """down~ with the reason slurmctld gives at ResumeTimeout: the node's ResumeFailProgram, which
    would have deleted its servers and resumed it (or given it an `elastic:` reason), never did."""
    return (state is not None and state.down and state.powered_down and not state.powering_down
            and state.reason == RESUME_TIMEOUT_REASON)


def keep_of(servers: Sequence[Server], slurm_address: str | None) -> Server | None:
    """Which of one node's live servers survives a duplicate repair."""
    if slurm_address:
        known = [s for s in servers if s.status == ACTIVE and slurm_address in _addresses(s)]
        if len(known) == 1:
            return known[0]
    keep, _ = placement.choose_server(servers)
    if keep is None and servers:
        keep = max(servers, key=lambda s: s.created or 0.0)
    return keep


def _addresses(server: Server) -> set[str]:
    return {addr for entries in server.addresses.values() for entry in entries if (addr := entry.get("addr"))}


def _delete(node: str, problem: str, server: Server, now: float, grace: float) -> Repair:
    return Repair(DELETE, node, problem, server, _wait_for_grace(server.created, now, grace))


def _wait_for_grace(created: float | None, now: float, grace: float) -> str:
    """Why a leftover made at `created` is not deleted yet ("" when it is due)."""
    if created is None:
        return "age unknown"
    if now - created < grace:
        return f"younger than the grace period ({duration(now - created)} < {duration(grace)})"
    return ""


def apply(config: Config, fleet: Fleet, slurm: SlurmRepairs, repairs: Sequence[Repair], *,
          locks: Callable[[Iterable[str]], ContextManager[frozenset[str]]], log: FilteringBoundLogger,
          clock: Callable[[], float] = time.time, history: PendingMemory | None = None) -> Result:
    """Carry out the due repairs, each node under its lock and only if a fresh look still wants it.

    A SlurmError while taking the fresh look propagates: nothing is changed then. A cloud that
    does not answer the fresh look gets no repair.
    """
    result = Result()
    due = [r for r in repairs if r.ready]
    with locks(sorted({r.node for r in due})) as taken:
        held = sorted(taken)
        result.skipped.extend((r, "node busy: another elastic run holds its lock") for r in due if r.node not in taken)
        if not held:
            return result
        pending = history.pending_deletes() if history is not None else {}
        # The first look listed every cloud: a server on a cloud its node's pool no longer lists
        # (the YAML changed) is looked for there again, or its repair would never be confirmed.
        also: dict[str, set[str]] = defaultdict(set)
        for repair in due:
            server = repair.server
            if server is not None and repair.node in taken and server.cloud not in fleet.scope(repair.node):
                also[server.cloud].add(repair.node)
        fresh = status.collect(config, fleet, slurm, held, need_slurm=True, pending=pending, also=also)
        fresh_rows = status.rows(config, fresh.servers, fresh.nodes, pools=None, unseen=fresh.unseen,
                                 pending=fresh.pending)
        fresh_rows = [row for row in fresh_rows if row.node in held]
        still = {r.key for r in plan(fresh_rows, clock(), config.reconcile.grace, pending=fresh.pending,
                                     unseen=fresh.unseen) if r.ready}
        todo = []
        for repair in due:
            if repair.node not in held:
                continue
            if repair.key in still:
                todo.append(repair)
            elif unseen := _unanswered(repair, fresh.unseen, fleet):
                result.skipped.append((repair, f"{', '.join(unseen)} did not answer the look under the node's lock: "
                                               "left for a later pass"))
            else:
                result.skipped.append((repair, "no longer needed: the node or its servers changed"))
        _run(todo, fleet, slurm, result, log=log, history=history, now=clock())
    return result


# The pending delete a stranded node's RESUME leaves on a cloud that did not answer.
BLIND_WHY = "reconcile: the cloud did not answer when the stranded node was resumed"


def _unanswered(repair: Repair, unseen: Mapping[str, object], fleet: Fleet) -> list[str]:
    """The clouds this repair depends on (its server's, or its node's scope) that did not answer
    the fresh look."""
    if repair.server is not None:
        clouds: Collection[str] = {repair.server.cloud}
    elif repair.cloud is not None:
        clouds = {repair.cloud}
    else:
        clouds = fleet.scope(repair.node)
    return sorted(cloud for cloud in clouds if cloud in unseen)


def _run(todo: Sequence[Repair], fleet: Fleet, slurm: SlurmRepairs, result: Result, *, log: FilteringBoundLogger,
         history: PendingMemory | None, now: float) -> None:
    """Deletes first (then the pending deletes they settle, and those to forget), then the state
    changes. A stranded node's RESUME goes with them only if every delete it comes `after` was
    accepted (204/202, 404, or the server was already being deleted); else it is skipped, and the
    next pass, which sees the delete retried or the server going, resumes the node."""
    deletes = [r for r in todo if r.action == DELETE]
    settled: dict[str, list[str]] = defaultdict(list)
    accepted: set[str] = set()
    if deletes:
        deletion = fleet.delete([cast(Server, r.server) for r in deletes], why="reconcile")
        accepted = {server.id for server in deletion.accepted}
        unsettled: set[tuple[str, str]] = set()  # a node's pending delete on a cloud stays if one of its deletes failed
        for repair in deletes:
            server = cast(Server, repair.server)
            failed = deletion.failed.get(server.id)
            if failed is not None:
                result.failed.append((repair, f"delete on {failed[1].cloud} failed: {failed[1].message}"))
                unsettled.add((repair.node, server.cloud))
            else:
                result.done.append(repair)
        for repair in deletes:
            server = cast(Server, repair.server)
            if repair.problem == status.PENDING and (repair.node, server.cloud) not in unsettled:
                settled[repair.node].append(server.cloud)
    for repair in todo:
        if repair.action == FORGET:
            settled[repair.node].append(cast(str, repair.cloud))
            result.done.append(repair)
    if settled and history is not None:
        history.clear_pending_deletes(dict(settled))
    resumes = []
    for repair in (r for r in todo if r.action == RESUME):
        left = [server_id for server_id in repair.after if server_id not in accepted]
        if left:
            result.skipped.append((repair, f"the delete of {', '.join(left)} was not accepted: resumed by a later "
                                           "pass"))
        elif repair.pending_on and history is None:
            result.skipped.append((repair, f"{', '.join(repair.pending_on)} did not answer and no history can hold "
                                           "a pending delete there: resumed by a later pass"))
        else:
            resumes.append(repair)
    blind = [r for r in resumes if r.pending_on]
    if blind and history is not None:
        history.add_pending_deletes({r.node: dict.fromkeys(r.pending_on, BLIND_WHY) for r in blind}, now)
        # The history only warns when it cannot save (its lock, the disk): read back what it holds.
        held = history.pending_deletes()
        for repair in blind:
            if not set(repair.pending_on) <= set(held.get(repair.node, {})):
                resumes.remove(repair)
                result.skipped.append((repair, f"its pending delete on {', '.join(repair.pending_on)} could not be "
                                               "saved: resumed by a later pass"))
    _set_state(slurm, resumes, "resume", None, result, log)
    downs = [r for r in todo if r.action == POWER_DOWN]
    if downs:
        names = [r.node for r in downs]
        try:
            slurm.set_state(names, "power_down_force", reason=REASON)
        except SlurmError as error:
            log.error("slurm.set_state", ok=False, nodes=names, state="power_down_force", error=str(error))
            result.failed.extend((r, str(error)) for r in downs)
        else:
            log.info("slurm.set_state", nodes=names, state="power_down_force", reason=REASON, why="reconcile")
            result.done.extend(downs)


def _set_state(slurm: SlurmRepairs, repairs: list[Repair], state: str, reason: str | None, result: Result,
               log: FilteringBoundLogger) -> None:
    if not repairs:
        return
    names = [r.node for r in repairs]
    try:
        slurm.set_state(names, state, reason=reason)
    except SlurmError as error:
        log.error("slurm.set_state", ok=False, nodes=names, state=state, error=str(error))
        result.failed.extend((r, str(error)) for r in repairs)
    else:
        log.info("slurm.set_state", nodes=names, state=state, reason=reason, why="reconcile")
        result.done.extend(repairs)


def describe(repair: Repair) -> str:
    if repair.action == RESUME:
        then = " once its servers' deletes are accepted" if repair.after else ""
        if repair.pending_on:
            then += f", with a pending delete on {', '.join(repair.pending_on)} (not answering)"
        return f"resume the node (down~ since ResumeTimeout; its ResumeFailProgram never finished){then}"
    if repair.action == POWER_DOWN:
        return "power_down_force the node (its server is gone)"
    if repair.action == FORGET:
        return f"forget the pending delete on {repair.cloud} (no server there)"
    what = {status.ORPHAN: "no powered-up node",
            status.PENDING: "its delete was pending"}.get(repair.problem, "duplicate")
    return f"delete server ({what})"


def render_plan(repairs: Sequence[Repair], now: float) -> str:
    body = []
    for r in repairs:
        server = r.server
        age = duration(now - server.created) if server is not None and server.created is not None else None
        body.append([r.action if r.ready else "wait", r.node, server.id if server else None,
                     server.cloud if server else r.cloud, server.status if server else None, age,
                     describe(r) + (f"; not yet: {r.wait}" if r.wait else "")])
    return format_table(["ACTION", "NODE", "SERVER", "CLOUD", "STATUS", "AGE", "WHY"], body)


def render_result(result: Result) -> str:
    body = [["done", r.node, r.action, r.server.id if r.server else None, ""] for r in result.done]
    body += [["FAILED", r.node, r.action, r.server.id if r.server else None, why] for r, why in result.failed]
    body += [["skipped", r.node, r.action, r.server.id if r.server else None, why] for r, why in result.skipped]
    return format_table(["RESULT", "NODE", "ACTION", "SERVER", "DETAIL"], body)


# ---- server groups -------------------------------------------------------------------------------


def empty_groups(config: Config, fleet: Fleet,
                 jobs_by_node: Mapping[str, Sequence[int]]) -> list[tuple[str, ServerGroup]]:
    """Our server groups with no member whose job holds no node in Slurm now: a resume leaves
    them behind when it fails between creating a group and its servers, or a suspend when its
    cloud did not answer. A group of a job Slurm still runs (a resume may be about to boot into
    it) is kept. Only when a pool uses server groups; clouds that do not answer are skipped."""
    clouds = sorted({e.cloud for pool in config.pools.values() if pool.server_group for e in pool.clouds
                     if e.cloud in fleet.clouds})
    live = {job for ids in jobs_by_node.values() for job in ids}
    found: list[tuple[str, ServerGroup]] = []
    for cloud, result in fleet.each_cloud({c: fleet.clouds[c].list_server_groups for c in clouds}).items():
        if isinstance(result, CloudError):
            continue
        found += [(cloud, g) for g in result
                  if server_groups.is_ours(g, config) and not g.members and server_groups.job_of(g) not in live]
    return found


def delete_groups(fleet: Fleet, groups: Sequence[tuple[str, ServerGroup]],
                  log: FilteringBoundLogger) -> list[tuple[str, ServerGroup, str | None]]:
    """Delete the groups; per group the error, or None when it is gone."""
    done: list[tuple[str, ServerGroup, str | None]] = []
    for cloud, group in groups:
        try:
            fleet.clouds[cloud].delete_server_group(group.id)
        except CloudError as error:
            log.error("cloud.delete_server_group", cloud=cloud, group=group.name, ok=False, error=str(error))
            done.append((cloud, group, str(error)))
            continue
        log.info("cloud.delete_server_group", cloud=cloud, group=group.name, ok=True, why="reconcile")
        done.append((cloud, group, None))
    return done


# ---- floating IPs --------------------------------------------------------------------------------

DETACHED = "detached"  # no port: its server was deleted (Neutron disassociates, never deletes)
STRAY = "stray"  # on a port that is no live server's of ours


@dataclass(frozen=True)
class IpRepair:
    """Delete one of our floating IPs that no live server of ours holds."""

    ip: FloatingIp
    problem: str  # DETACHED or STRAY
    wait: str = ""  # why it is not due yet

    @property
    def ready(self) -> bool:
        return not self.wait


def plan_floating_ips(ips: Iterable[FloatingIp], servers: Iterable[Server], now: float, grace: float, *,
                      pending: Mapping[str, Mapping[str, PendingDelete]] | None = None) -> list[IpRepair]:
    """Which of our floating IPs (`ips`, marked ours by the cloud adapter) leaked: not associated, or
    associated with a port whose server is not a live server of ours (`servers`, listed after the
    IPs, so a server that got its IP between the two lists is in it). One younger than `grace` waits:
    it may be a resume's, just made, whose server this look did not see yet.

    One on a server of its node that is being deleted while a suspend or resume-fail of the node is
    under way on that cloud (`pending`, History's pending deletes, marked `UNDER_WAY`) waits too: that
    run sweeps the node's detached IPs once the server is gone. Should it not (killed, the server
    still there at its timeout, a failed sweep), the mark is settled or replaced (by the run, or by
    reconcile's `forget` while the server is deleting) and the IP is due on the next look."""
    servers = list(servers)
    live = {(s.cloud, s.id) for s in servers if not s.deleting}
    going = {(s.cloud, s.id): s.name for s in servers if s.deleting}
    repairs = []
    for ip in ips:
        if ip.port_id is not None and ip.server_id is not None and (ip.cloud, ip.server_id) in live:
            continue
        wait = _wait_for_grace(ip.created, now, grace)
        if not wait and ip.port_id is not None and going.get((ip.cloud, ip.server_id or "")) == ip.node:
            entry = (pending or {}).get(ip.node, {}).get(ip.cloud)
            why = entry["why"] if entry is not None else ""
            if why.endswith(UNDER_WAY):
                wait = f"its server is being deleted ({why}); that run deletes the IP once the server is gone"
        repairs.append(IpRepair(ip, DETACHED if ip.port_id is None else STRAY, wait))
    return repairs


def floating_ip_clouds(config: Config, fleet: Fleet) -> list[str]:
    """The clouds where a pool takes floating IPs: the only ones where we make them."""
    return sorted({e.cloud for pool in config.pools.values() for e in pool.clouds
                   if e.floating_ip and e.cloud in fleet.clouds})


def leaked_floating_ips(config: Config, fleet: Fleet, now: float, *,
                        pending: Mapping[str, Mapping[str, PendingDelete]] | None = None,
                        ) -> tuple[list[IpRepair], dict[str, CloudError]]:
    """The floating-IP repairs on every cloud a pool takes floating IPs from, and the clouds that did
    not answer (they get none). Per cloud the IPs are listed first, then our servers. `pending`:
    History's pending deletes (see `plan_floating_ips`)."""
    def look(cloud: str) -> tuple[list[FloatingIp], list[Server]]:
        guard = fleet.clouds[cloud]
        ips = with_retries(lambda: guard.list_floating_ips(config.cluster), sleep=fleet.sleep)
        if not ips:
            return [], []
        return ips, with_retries(lambda: guard.list_servers(config.cluster), sleep=fleet.sleep)

    repairs: list[IpRepair] = []
    unseen: dict[str, CloudError] = {}
    for cloud, result in fleet.each_cloud({c: functools.partial(look, c)
                                           for c in floating_ip_clouds(config, fleet)}).items():
        if isinstance(result, CloudError):
            unseen[cloud] = result
            continue
        ips, servers = result
        repairs += plan_floating_ips(ips, servers, now, config.reconcile.grace, pending=pending)
    return repairs, unseen


def delete_floating_ips(config: Config, fleet: Fleet, repairs: Sequence[IpRepair], *, log: FilteringBoundLogger,
                        clock: Callable[[], float] = time.time,
                        history: PendingMemory | None = None) -> list[tuple[IpRepair, str, str]]:
    """Delete the due floating IPs that a fresh look (with `history`'s pending deletes read again)
    still finds leaked and due; per repair (repair, RESULT, detail) with RESULT done, FAILED or
    skipped. No node lock is needed: our flows never take up a detached IP again (a resume makes a
    new one on the port), and a suspend deleting the same IP first only makes ours a harmless 404."""
    due = [r for r in repairs if r.ready]
    if not due:
        return []
    pending = history.pending_deletes() if history is not None else None
    fresh, unseen = leaked_floating_ips(config, fleet, clock(), pending=pending)
    still = {(r.ip.cloud, r.ip.id) for r in fresh if r.ready}
    outcome: list[tuple[IpRepair, str, str]] = []
    for repair in due:
        ip = repair.ip
        if ip.cloud in unseen:
            outcome.append((repair, "skipped", f"cloud {ip.cloud} did not answer the fresh look"))
            continue
        if (ip.cloud, ip.id) not in still:
            outcome.append((repair, "skipped", "no longer needed: the floating IP changed or is gone"))
            continue
        try:
            with_retries(functools.partial(fleet.clouds[ip.cloud].delete_floating_ip, ip.id), sleep=fleet.sleep)
        except CloudError as error:
            log.error("cloud.delete_floating_ip", cloud=ip.cloud, node=ip.node, ip=ip.address, id=ip.id, ok=False,
                      error=str(error))
            outcome.append((repair, "FAILED", str(error)))
            continue
        log.info("cloud.delete_floating_ip", cloud=ip.cloud, node=ip.node, ip=ip.address, id=ip.id, ok=True,
                 why=f"reconcile: {repair.problem}")
        outcome.append((repair, "done", ""))
    return outcome


def ip_problem(repair: IpRepair) -> str:
    if repair.problem == DETACHED:
        return "detached: its server is gone"
    return f"on {repair.ip.server_id or 'a port that is gone'}, no live server of ours"


def describe_ip(repair: IpRepair) -> str:
    return f"delete floating IP ({ip_problem(repair)})"


def render_ip_plan(repairs: Sequence[IpRepair], now: float) -> str:
    body = [["delete" if r.ready else "wait", r.ip.node, r.ip.address, r.ip.id,
             r.ip.cloud, r.ip.status or None, duration(now - r.ip.created) if r.ip.created is not None else None,
             describe_ip(r) + (f"; not yet: {r.wait}" if r.wait else "")] for r in repairs]
    return format_table(["ACTION", "NODE", "FLOATING IP", "ID", "CLOUD", "STATUS", "AGE", "WHY"], body)


def render_ip_result(outcome: Sequence[tuple[IpRepair, str, str]]) -> str:
    body = [[result, r.ip.node, r.ip.address, r.ip.cloud, detail] for r, result, detail in outcome]
    return format_table(["RESULT", "NODE", "FLOATING IP", "CLOUD", "DETAIL"], body)
