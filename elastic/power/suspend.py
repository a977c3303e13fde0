"""Suspend: delete the servers of these nodes wherever they are (ResumeFail reuses `release`).

Servers are found by exact name on every cloud of the node's pool (every configured cloud for a
node in no pool) and confirmed by our cluster's metadata. Deleting is idempotent: a server that
is already gone, or already being deleted, is fine.

A delete that cannot happen now because a cloud does not answer (or refuses our credentials) is
not the node's fault: Slurm already counts the node as powered down, so it stays that way and the
delete is remembered as pending (History); the next run that sees the cloud, or `elastic
reconcile`, carries it out, and a resume never adopts such a server. Only a server the cloud
answered for and refused to delete (locked: 409) puts the node DOWN, for an admin to look.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from elastic.cloud import Server
from elastic.errors import CloudErrorKind
from elastic.fleet import Fleet, Sighting
from elastic.history import UNDER_WAY
from elastic.power import server_groups
from elastic.power.outcome import Failure, Outcome, report_failures
from elastic.power.services import Services
from elastic.served import Served

# The cloud answered and said no to this server: waiting will not help.
_REFUSALS = frozenset({CloudErrorKind.CONFLICT, CloudErrorKind.CONFIG})


def suspend(nodes: Sequence[str], svc: Services) -> Outcome:
    outcome = release(nodes, svc, why="suspend")
    report_failures(outcome.failed, svc, transient_state="down")
    return outcome


def release(nodes: Sequence[str], svc: Services, *, why: str) -> Outcome:
    """Delete every server of the nodes; what cannot be deleted now is deferred (see module doc)."""
    nodes = list(dict.fromkeys(nodes))
    started = svc.clock()  # before the locks: a resume that Slurm asked for after this is not stopped
    fleet = svc.fleet()
    # Taken out of the file whatever this run then does: a run deletes a noted id at most once.
    served_with = svc.served.take(svc.config.cluster, nodes) if svc.served is not None else {}
    # The release time and the deletes first, in one write, before any lock: a resume of these nodes
    # that started before this run cancels them, whether it holds their locks now (it checks as it
    # polls) or waits for them; and a run killed while it waits for a lock leaves the deletes pending,
    # so no later resume adopts a server whose slurmd predates its power-up (Slurm would wait for it
    # until ResumeTimeout), and reconcile deletes them without a grace period.
    svc.history.record_releases(nodes, started, {node: dict.fromkeys(fleet.scope(node), f"{why}: {UNDER_WAY}")
                                                 for node in nodes})
    outcome = Outcome()
    deferred: dict[str, dict[str, str]] = defaultdict(dict)  # node -> cloud -> why
    left = nodes
    give_up = started + svc.config.timeouts.lock
    while left:
        with svc.locks(left) as held:
            batch = [node for node in left if node in held]
            if batch:
                _release_locked(batch, fleet, svc, outcome, deferred, served_with, why=why)
        left = [node for node in left if node not in held]
        if left and svc.clock() >= give_up:
            # Another run (a resume booting them, a slow suspend) holds them: not the nodes' fault.
            # Slurm counts them as powered down, so they stay that way; their deletes are pending
            # for the next run that locks them, or reconcile (a resume that holds them cancels them).
            for node in left:
                deferred[node].update(dict.fromkeys(fleet.scope(node), f"{why}: node lock held by another run"))
            svc.history.add_pending_deletes({node: deferred[node] for node in left}, svc.clock())
            svc.log.warning(f"{why}.lock_busy", nodes=left, seconds=round(svc.clock() - started, 1))
            break
        if left:
            svc.sleep(LOCK_RETRY_SECONDS)
    for node in nodes:
        if node not in outcome.failed:
            outcome.served[node] = None
            if deferred.get(node):
                outcome.deferred[node] = sorted(deferred[node])
    if outcome.deferred:
        svc.log.warning(f"{why}.deferred", nodes=outcome.deferred)
    return outcome


# How often a release comes back for nodes whose locks another run holds (up to timeouts.lock).
LOCK_RETRY_SECONDS = 0.2


def _release_locked(nodes: list[str], fleet: Fleet, svc: Services, outcome: Outcome,
                    deferred: dict[str, dict[str, str]], served_with: Mapping[str, Served], *,
                    why: str) -> None:
    """Delete the servers of nodes whose locks this run holds, and wait for them to go."""
    # The intent again, now under the locks: `release` wrote it before them, but another run that
    # held a lock meanwhile (a suspend, reconcile) may have settled it. A run killed from here on
    # leaves these deletes pending (see `release`); `_remember` settles what this run saw done.
    svc.history.add_pending_deletes({node: dict.fromkeys(fleet.scope(node), f"{why}: {UNDER_WAY}")
                                     for node in nodes}, svc.clock())
    sighting, deleted_ahead = _find_deleting_ahead(nodes, served_with, fleet, svc, why=why)
    for node, clouds in fleet.blind_spots(nodes, sighting).items():
        for cloud in clouds:
            deferred[node][cloud] = f"{why}: cannot list servers: {sighting.unseen[cloud].message}"
    doomed = [s for node in nodes for s in sighting.of(node)]
    grouped = _uses_server_groups(nodes, svc)
    groups = server_groups.holding(fleet.clouds, doomed, svc.config, svc.log) if grouped and doomed else {}
    deletion = fleet.delete([s for s in doomed if s.id not in deleted_ahead], why=why)
    deletion.accepted += [s for s in doomed if s.id in deleted_ahead]
    for server, error in deletion.failed.values():
        if error.kind in _REFUSALS:
            outcome.fail([server.name],
                         Failure(error.kind.value, f"delete on {server.cloud} refused: {error.message}"))
        else:
            deferred[server.name][server.cloud] = f"{why}: delete failed: {error.kind.value}: {error.message}"
    lingering = fleet.wait_gone(deletion.accepted, svc.config.timeouts.delete)
    for server in lingering:
        deferred[server.name].setdefault(server.cloud,
                                         f"{why}: still there after {svc.config.timeouts.delete:.0f}s")
    _sweep_floating_ips(deletion.accepted, lingering, fleet, why)
    _remember(nodes, deferred, fleet, svc)
    if groups:
        # A group goes with its last server (Nova drops a member when the server is gone).
        server_groups.delete_empty(fleet.clouds, groups, svc.config, svc.log)


def _find_deleting_ahead(nodes: list[str], served_with: Mapping[str, Served], fleet: Fleet,
                         svc: Services, *, why: str) -> tuple[Sighting, set[str]]:
    """Look for the nodes' servers (Fleet.find) while deleting, in parallel, the server a resume
    served each node with (elastic.served): the delete no longer waits for the look, which saves
    a one-node suspend a round trip. Returns the sighting and the ids of those deletes accepted.

    Only for the pool the server was made for, and where a delete needs nothing first or beside
    it: no floating IP to release before, no server group to find before the member goes. A
    delete that fails here is left to the look: a server it sees is deleted again as usual, and a
    cloud it cannot see defers the node's delete. Why this id needs no look first: elastic.served.
    """
    batch = set(nodes)
    ahead = [Server(id=served.id, name=node, status="", cloud=served.cloud)
             for node, served in served_with.items() if node in batch
             and served.pool == svc.config.pool_of(node) and served.cloud in fleet.scope(node)
             and not _uses_server_groups([node], svc)]
    ahead = [server for server in ahead if not fleet.may_hold_floating_ip(server)]
    if not ahead:
        return fleet.find(nodes), set()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="delete-ahead") as pool:
        deleting = pool.submit(fleet.delete, ahead, why=why)
        sighting = fleet.find(nodes)
        return sighting, {server.id for server in deleting.result().accepted}


def _sweep_floating_ips(accepted: Sequence[Server], lingering: Sequence[Server], fleet: Fleet, why: str) -> None:
    """With the servers gone, their nodes' detached floating IPs go too (Fleet.sweep_floating_ips)."""
    still = {server.id for server in lingering}
    by_cloud: dict[str, set[str]] = defaultdict(set)
    for server in accepted:
        if server.id not in still and fleet.may_hold_floating_ip(server):
            by_cloud[server.cloud].add(server.name)
    if by_cloud:
        fleet.sweep_floating_ips(by_cloud, why=why)


def _uses_server_groups(nodes: list[str], svc: Services) -> bool:
    pools = {svc.config.pool_of(node) for node in nodes}
    return any(svc.config.pools[p].server_group is not None for p in pools if p is not None)


def _remember(nodes: list[str], deferred: dict[str, dict[str, str]], fleet: Fleet, svc: Services) -> None:
    """Pending deletes: add what is deferred, and settle what this run saw done."""
    svc.history.clear_pending_deletes({node: [c for c in fleet.scope(node) if c not in deferred.get(node, {})]
                                       for node in nodes})
    svc.history.add_pending_deletes({node: clouds for node, clouds in deferred.items() if clouds}, svc.clock())
