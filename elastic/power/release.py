"""Suspend and ResumeFail: delete the servers of these nodes wherever they are.

Servers are found by exact name on every configured cloud and confirmed by our cluster's
metadata, so a node whose pool was removed from the YAML still loses its server. Deleting is
idempotent: a server that is already gone, or already being deleted, is fine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from elastic.cloud import Server
from elastic.errors import CloudError, SlurmError
from elastic.power.outcome import Failure, Outcome, report_failures
from elastic.power.retry import with_retries
from elastic.power.services import Services


def suspend(nodes: Sequence[str], svc: Services) -> Outcome:
    outcome = _delete_nodes(nodes, svc, "suspend")
    # Slurm already counts these nodes as powered down; one whose server we could not delete
    # goes DOWN so it is not handed a job before someone looks (reconcile retries the delete).
    report_failures(outcome.failed, svc, transient_state="down")
    return outcome


def resume_fail(nodes: Sequence[str], svc: Services) -> Outcome:
    outcome = _delete_nodes(nodes, svc, "resume-fail")
    policy = svc.config.resume_fail
    now = svc.clock()
    back: list[str] = []
    for node in outcome.served:
        svc.history.record_node_failure(node, now)
        count = svc.history.node_failures(node, now, policy.window)
        if count >= policy.max_failures:
            outcome.failed[node] = Failure(
                "repeated-failure",
                f"failed to resume {count} times in {policy.window:.0f}s; "
                "fix the pool, then scontrol update nodename=... state=resume",
                permanent=True,
            )
        else:
            back.append(node)
    for node in outcome.failed:
        outcome.served.pop(node, None)
    if back:
        # ResumeTimeout left the node down~, which never recovers by itself: make it idle~ again.
        try:
            svc.slurm.set_state(back, "resume")
            svc.log.info("slurm.set_state", nodes=back, state="resume")
        except SlurmError as error:
            svc.log.error("slurm.set_state", ok=False, nodes=back, state="resume", error=str(error))
    report_failures(outcome.failed, svc, transient_state="down")
    return outcome


def _delete_nodes(nodes: Sequence[str], svc: Services, why: str) -> Outcome:
    outcome = Outcome()
    with svc.locks(sorted(set(nodes))):
        found, unreachable = _find(nodes, svc)
        for node in nodes:
            if node in unreachable:
                outcome.fail([node], unreachable[node])
        doomed = [s for servers in found.values() for s in servers if not s.deleting]
        failures = delete_servers(doomed, svc, why=why)
        for node, failure in failures.items():
            outcome.fail([node], failure)
        accepted = {node: servers for node, servers in found.items() if node not in failures}
        for node, failure in _wait_gone(accepted, svc).items():
            outcome.fail([node], failure)
    for node in nodes:
        if node not in outcome.failed:
            outcome.served[node] = None
    return outcome


def _find(nodes: Sequence[str], svc: Services) -> tuple[dict[str, list[Server]], dict[str, Failure]]:
    found: dict[str, list[Server]] = defaultdict(list)
    unreachable: dict[str, Failure] = {}
    for name, cloud in svc.clouds.items():
        try:
            servers = with_retries(lambda c=cloud: c.list_servers(svc.config.cluster, list(nodes)), sleep=svc.sleep)
        except CloudError as error:
            svc.log.error("cloud.list", cloud=name, ok=False, error=str(error))
            # A node may have a server on the cloud we cannot see: we cannot say it is gone.
            for node in nodes:
                unreachable.setdefault(node, Failure(error.kind.value, f"cannot list servers on {name}: {error.message}"))
            continue
        for server in servers:
            found[server.name].append(server)
    return found, unreachable


def delete_servers(servers: list[Server], svc: Services, *, why: str) -> dict[str, Failure]:
    """Delete servers (releasing floating IPs first) in a bounded pool; failures by node name."""
    if not servers:
        return {}

    def delete(server: Server) -> tuple[Server, CloudError | None]:
        cloud = svc.clouds[server.cloud]
        started = time.monotonic()
        try:
            if server.floating_address():
                with_retries(lambda: cloud.release_floating_ips(server.id), sleep=svc.sleep)
            with_retries(lambda: cloud.delete_server(server.id), sleep=svc.sleep)
        except CloudError as error:
            svc.log.error("cloud.delete", node=server.name, cloud=server.cloud, server=server.id, ok=False, why=why,
                          kind=error.kind.value, error=str(error), seconds=round(time.monotonic() - started, 3))
            return server, error
        svc.log.info("cloud.delete", node=server.name, cloud=server.cloud, server=server.id, ok=True, why=why,
                     seconds=round(time.monotonic() - started, 3))
        return server, None

    workers = max(min(max(c.max_parallel for c in svc.config.clouds.values()), len(servers)), 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="delete") as pool:
        results = list(pool.map(delete, servers))
    return {server.name: Failure(error.kind.value, f"delete on {server.cloud} failed: {error.message}")
            for server, error in results if error is not None}


def _wait_gone(found: dict[str, list[Server]], svc: Services) -> dict[str, Failure]:
    """Wait (one list per cloud per poll) until the deleted servers are gone, within timeouts.delete."""
    remaining = {s.id: s for servers in found.values() for s in servers}
    deadline = svc.clock() + svc.config.timeouts.delete
    while remaining:
        by_cloud: dict[str, list[Server]] = defaultdict(list)
        for server in remaining.values():
            by_cloud[server.cloud].append(server)
        for cloud_name, servers in by_cloud.items():
            try:
                present = {s.id for s in svc.clouds[cloud_name].list_servers(
                    svc.config.cluster, sorted({s.name for s in servers}))}
            except CloudError as error:
                svc.log.warning("cloud.list", cloud=cloud_name, ok=False, error=str(error))
                continue
            for server in servers:
                if server.id not in present:
                    remaining.pop(server.id)
        if not remaining:
            break
        if svc.clock() >= deadline:
            return {s.name: Failure("timeout", f"server on {s.cloud} still there after {svc.config.timeouts.delete:.0f}s")
                    for s in remaining.values()}
        svc.sleep(min(svc.config.timeouts.poll, 1.0))
    return {}
