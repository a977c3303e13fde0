"""`elastic reconcile`: the repairs for the mismatches `elastic status` flags, applied on request.

- orphan: delete the server, once it is older than `reconcile.grace`, so a server a resume has just
  created is never taken for one.
- duplicate: keep one server and delete the others (older than the grace period). The kept one is
  the ACTIVE server whose address Slurm already has, else the newest ACTIVE, else the newest
  BUILD, as a resume would adopt.
- missing: `power_down_force` the node with an `elastic:` reason. Its jobs are requeued now (the
  server is gone, so they are too) and the node returns to idle~.

Applying re-reads each node's servers and Slurm state under the node's lock (the lock resume and
suspend take) and carries out only the repairs the fresh look still asks for: between the first
look and the lock a resume may have started (POWERING_UP) and adopted the very server we saw
idle. A node whose lock another run holds is skipped until the next pass.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any, cast

from elastic.admin import status
from elastic.admin.table import duration, format_table
from elastic.cloud import ACTIVE, Cloud, Server
from elastic.config import Config
from elastic.errors import LockTimeout, SlurmError
from elastic.power import placement
from elastic.power.release import delete_servers
from elastic.power.services import Services

DELETE = "delete"
POWER_DOWN = "power_down"
REASON = "elastic: reconcile: server vanished"


@dataclass(frozen=True)
class Repair:
    action: str  # DELETE or POWER_DOWN
    node: str
    problem: str  # the status mismatch this repairs
    server: Server | None = None
    wait: str = ""  # why it is not due yet; empty when it may be applied

    @property
    def ready(self) -> bool:
        return not self.wait

    @property
    def key(self) -> tuple[str, str, str | None]:
        return self.action, self.node, self.server.id if self.server else None


@dataclass
class Result:
    done: list[Repair] = field(default_factory=list)
    failed: list[tuple[Repair, str]] = field(default_factory=list)
    skipped: list[tuple[Repair, str]] = field(default_factory=list)


def plan(table_rows: Iterable[status.Row], now: float, grace: float) -> list[Repair]:
    """The repairs for the flagged rows, in row order; those not due yet carry `wait`."""
    by_node: dict[str, list[status.Row]] = defaultdict(list)
    for row in table_rows:
        by_node[row.node].append(row)
    repairs: list[Repair] = []
    for node, node_rows in by_node.items():
        problem = next((row.problem for row in node_rows if row.problem), None)
        live = [row.server for row in node_rows if row.server is not None and not row.server.deleting]
        if problem == status.ORPHAN:
            repairs.extend(_delete(node, problem, server, now, grace) for server in live)
        elif problem == status.DUPLICATE:
            slurm = node_rows[0].slurm
            keep = keep_of(live, slurm.addr if slurm else None)
            repairs.extend(_delete(node, problem, server, now, grace) for server in live if server is not keep)
        elif problem == status.MISSING:
            repairs.append(Repair(POWER_DOWN, node, problem))
    return repairs


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
    return {entry.get("addr") for entries in server.addresses.values() for entry in entries if entry.get("addr")}


def _delete(node: str, problem: str, server: Server, now: float, grace: float) -> Repair:
    if server.created is None:
        wait = "age unknown"
    elif now - server.created < grace:
        wait = f"younger than the grace period ({duration(now - server.created)} < {duration(grace)})"
    else:
        wait = ""
    return Repair(DELETE, node, problem, server, wait)


def apply(config: Config, clouds: Mapping[str, Cloud], slurm, repairs: Sequence[Repair], *,
          locks: Callable[[Iterable[str]], ContextManager[None]], log: Any,
          clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> Result:
    """Carry out the due repairs, each node under its lock and only if a fresh look still wants it.

    A CloudError or SlurmError while taking the fresh look propagates: nothing is changed then.
    """
    result = Result()
    due = [r for r in repairs if r.ready]
    with contextlib.ExitStack() as held_locks:
        held: list[str] = []
        for node in sorted({r.node for r in due}):
            try:
                held_locks.enter_context(locks([node]))
            except LockTimeout:
                result.skipped.extend((r, "node busy: another elastic run holds its lock") for r in due if r.node == node)
                continue
            held.append(node)
        if not held:
            return result
        fresh = status.collect(config, clouds, slurm, held, need_slurm=True)
        by_node: dict[str, list[Server]] = defaultdict(list)
        for server in fresh.servers:
            by_node[server.name].append(server)
        fresh_rows = [row for node in held
                      for row in status.node_rows(node, config.pool_of(node), by_node.get(node, []), fresh.nodes)]
        still = {r.key for r in plan(fresh_rows, clock(), config.reconcile.grace) if r.ready}
        todo = []
        for repair in due:
            if repair.node not in held:
                continue
            if repair.key in still:
                todo.append(repair)
            else:
                result.skipped.append((repair, "no longer needed: the node or its servers changed"))
        _run(todo, config, clouds, slurm, result, log=log, clock=clock, sleep=sleep)
    return result


def _run(todo: Sequence[Repair], config: Config, clouds: Mapping[str, Cloud], slurm, result: Result, *,
         log: Any, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    deletes = [r for r in todo if r.action == DELETE]
    if deletes:
        # delete_servers needs no failure history; it only deletes and logs.
        services = Services(config=config, clouds=clouds, slurm=slurm, history=cast(Any, None), log=log,
                            clock=clock, sleep=sleep)
        failures = delete_servers([cast(Server, r.server) for r in deletes], services, why="reconcile")
        for repair in deletes:
            failure = failures.get(repair.node)
            if failure is not None:
                result.failed.append((repair, failure.message))
            else:
                result.done.append(repair)
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


def describe(repair: Repair) -> str:
    if repair.action == POWER_DOWN:
        return "power_down_force the node (its server is gone)"
    what = "no powered-up node" if repair.problem == status.ORPHAN else "duplicate"
    return f"delete server ({what})"


def render_plan(repairs: Sequence[Repair], now: float) -> str:
    body = []
    for r in repairs:
        server = r.server
        age = duration(now - server.created) if server is not None and server.created is not None else None
        body.append([r.action if r.ready else "wait", r.node, server.id if server else None,
                     server.cloud if server else None, server.status if server else None, age,
                     describe(r) + (f"; not yet: {r.wait}" if r.wait else "")])
    return format_table(["ACTION", "NODE", "SERVER", "CLOUD", "STATUS", "AGE", "WHY"], body)


def render_result(result: Result) -> str:
    body = [["done", r.node, r.action, r.server.id if r.server else None, ""] for r in result.done]
    body += [["FAILED", r.node, r.action, r.server.id if r.server else None, why] for r, why in result.failed]
    body += [["skipped", r.node, r.action, r.server.id if r.server else None, why] for r, why in result.skipped]
    return format_table(["RESULT", "NODE", "ACTION", "SERVER", "DETAIL"], body)
