"""`elastic reconcile`: the repair plan for each mismatch, the grace period, and applying under locks."""

from __future__ import annotations

import contextlib
import dataclasses

import structlog

from elastic.admin import reconcile, status
from elastic.cloud import ACTIVE, BUILDING, ERROR, FloatingIp, Server, floating_ip_mark
from elastic.errors import CloudError, CloudErrorKind
from elastic.fleet import Fleet, NoMemory
from elastic.slurm import NodeState
from elastic.testing import FakeClock, MemoryCloud, MemoryHistory

from tests.support.admin import ALLOCATED, CONFIG, IDLE, NOW, POWERING_UP, FakeSlurm, make_config, ours, slurm_nodes

GRACE = 600


def plan_for(config, clouds, nodes, now=NOW):
    servers = [s for cloud in clouds.values() for s in cloud.list_servers(config.cluster)]
    return reconcile.plan(status.rows(config, servers, nodes), now, GRACE)


def summary(repairs):
    return sorted((r.action if r.ready else "wait", r.node, r.server.id if r.server else None) for r in repairs)


def fleet_of(config, clouds, clock):
    return Fleet(config, clouds, NoMemory(), log=null_log(), clock=clock, sleep=clock.sleep)


def null_log():
    return structlog.wrap_logger(structlog.testing.CapturingLogger())


def no_locks(names):
    return contextlib.nullcontext(frozenset(names))


def test_orphans_older_than_grace_are_deleted_younger_ones_wait(tmp_path):
    """An orphan past the grace period is due for deletion; a younger one (booting) and one of unknown age wait."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    old = cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 1)
    young = cloud.add("cpu-002", status=BUILDING, metadata=ours("cpu-002"), created=NOW - 60)
    unknown = cloud.add("cpu-003", metadata=ours("cpu-003"))
    cloud.servers[unknown.id] = dataclasses.replace(unknown, created=None)
    repairs = plan_for(config, {"alpha": cloud}, slurm_nodes())
    assert summary(repairs) == [("delete", "cpu-001", old.id), ("wait", "cpu-002", young.id),
                                ("wait", "cpu-003", unknown.id)]
    waits = {r.node: r.wait for r in repairs}
    assert waits["cpu-002"].startswith("younger than the grace period") and waits["cpu-003"] == "age unknown"


def test_duplicates_keep_the_newest_active(tmp_path):
    """Of three servers (old ACTIVE, new ACTIVE, ERROR) the newest ACTIVE stays; the others are deleted."""
    config = make_config(tmp_path)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    old = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 5000)
    new = beta.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 4000)
    broken = alpha.add("cpu-001", status=ERROR, metadata=ours("cpu-001"), created=NOW - 3000)
    repairs = plan_for(config, {"alpha": alpha, "beta": beta}, slurm_nodes(cpu_001=ALLOCATED))
    assert summary(repairs) == sorted([("delete", "cpu-001", old.id), ("delete", "cpu-001", broken.id)])
    assert new.id not in {r.server.id for r in repairs}


def test_duplicates_keep_the_server_whose_address_slurm_has(tmp_path):
    """When Slurm's NodeAddr is one ACTIVE server's address, that server is kept even if it is older."""
    config = make_config(tmp_path)
    alpha = MemoryCloud("alpha")
    old = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 5000)
    new = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 4000)
    address = old.fixed_address()
    assert address and address != new.fixed_address()
    nodes = slurm_nodes()
    nodes["cpu-001"] = NodeState.from_state("cpu-001", ALLOCATED, addr=address)
    repairs = plan_for(config, {"alpha": alpha}, nodes)
    assert summary(repairs) == [("delete", "cpu-001", new.id)]


def test_young_duplicate_waits(tmp_path):
    """A duplicate younger than the grace period is not deleted yet."""
    config = make_config(tmp_path)
    alpha = MemoryCloud("alpha", boot_polls=1000)
    alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 5000)
    booting = alpha.add("cpu-001", status=BUILDING, metadata=ours("cpu-001"), created=NOW - 10)
    repairs = plan_for(config, {"alpha": alpha}, slurm_nodes(cpu_001=IDLE))
    assert summary(repairs) == [("wait", "cpu-001", booting.id)]


def test_missing_server_powers_the_node_down(tmp_path):
    """A powered-up node without a server gets one power-down repair; a POWERING_UP one gets none."""
    config = make_config(tmp_path)
    repairs = plan_for(config, {}, slurm_nodes(cpu_001=IDLE, cpu_002=POWERING_UP))
    assert summary(repairs) == [("power_down", "cpu-001", None)]


def test_apply_deletes_due_orphans_and_powers_down_missing_nodes(tmp_path):
    """--apply deletes the old orphan, leaves the booting one, and power_down_forces the node with an elastic reason."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    old = cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 100)
    young = cloud.add("cpu-002", status=BUILDING, metadata=ours("cpu-002"), created=NOW - 5)
    slurm = FakeSlurm(node_states=slurm_nodes(gpu_1=IDLE))
    clock = FakeClock(NOW)
    repairs = plan_for(config, {"alpha": cloud}, slurm.nodes())
    result = reconcile.apply(config, fleet_of(config, {"alpha": cloud}, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock)
    assert summary(result.done) == [("delete", "cpu-001", old.id), ("power_down", "gpu-1", None)]
    assert result.failed == [] and result.skipped == []
    assert ("delete", old.id) in cloud.calls and ("delete", young.id) not in cloud.calls
    assert slurm.changes == [(("gpu-1",), "power_down_force", reconcile.REASON)]
    assert reconcile.REASON.startswith("elastic:")


def test_apply_skips_a_node_whose_resume_started_since_the_plan(tmp_path):
    """If the node turned POWERING_UP between the plan and the lock, its (adoptable) server is not deleted."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    server = cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 100)
    slurm = FakeSlurm()
    repairs = plan_for(config, {"alpha": cloud}, slurm.nodes())
    assert summary(repairs) == [("delete", "cpu-001", server.id)]

    def resume_starts(fake):
        fake.node_states["cpu-001"] = NodeState.from_state("cpu-001", POWERING_UP)

    slurm.on_read = resume_starts
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": cloud}, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock)
    assert result.done == [] and [r.node for r, _ in result.skipped] == ["cpu-001"]
    assert not any(op == "delete" for op, _ in cloud.calls)


def test_apply_takes_each_nodes_lock_and_skips_busy_nodes(tmp_path):
    """Each repaired node's lock is held during the repair; a node whose lock is busy is skipped untouched."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    a = cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 100)
    b = cloud.add("cpu-002", metadata=ours("cpu-002"), created=NOW - GRACE - 100)
    held: list[str] = []
    seen_during_delete: list[list[str]] = []

    @contextlib.contextmanager
    def locks(names):
        names = [name for name in names if name != "cpu-002"]  # another run holds cpu-002
        held.extend(names)
        try:
            yield frozenset(names)
        finally:
            for name in names:
                held.remove(name)

    original_delete = cloud.delete_server

    def delete(server_id):
        seen_during_delete.append(list(held))
        original_delete(server_id)

    cloud.delete_server = delete
    slurm = FakeSlurm()
    repairs = plan_for(config, {"alpha": cloud}, slurm.nodes())
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": cloud}, clock), slurm, repairs, locks=locks,
                             log=null_log(), clock=clock)
    assert summary(result.done) == [("delete", "cpu-001", a.id)]
    assert [(r.server.id, why) for r, why in result.skipped] == [
        (b.id, "node busy: another elastic run holds its lock")]
    assert seen_during_delete == [["cpu-001"]] and held == []


def test_apply_reports_failed_deletes_and_state_changes(tmp_path):
    """A delete the cloud refuses and an scontrol update that fails are reported as failed repairs."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 100)
    cloud.fail_next("delete", CloudErrorKind.CONFLICT, message="server is locked")
    slurm = FakeSlurm(node_states=slurm_nodes(cpu_003=IDLE), fail_updates=True)
    repairs = plan_for(config, {"alpha": cloud}, slurm.nodes())
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": cloud}, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock)
    assert result.done == []
    failed = {r.node: why for r, why in result.failed}
    assert "server is locked" in failed["cpu-001"] and "Invalid node state" in failed["cpu-003"]


def test_waiting_repairs_are_not_applied(tmp_path):
    """apply never touches a repair that is not due (the booting server survives --apply)."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha", boot_polls=1000)
    cloud.add("cpu-001", status=BUILDING, metadata=ours("cpu-001"), created=NOW - 1)
    slurm = FakeSlurm()
    repairs = plan_for(config, {"alpha": cloud}, slurm.nodes())
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": cloud}, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock)
    assert result.done == result.failed == result.skipped == [] and slurm.reads == 1
    assert [s.status for s in cloud.live()] == [BUILDING] and not any(op == "delete" for op, _ in cloud.calls)


def test_plan_table_says_what_and_why(tmp_path):
    """The printed plan shows the action (or 'wait'), node, server, cloud, status, age and reason."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    cloud.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 3 * 3600)
    cloud.add("cpu-002", status=BUILDING, metadata=ours("cpu-002"), created=NOW - 60)
    lines = reconcile.render_plan(plan_for(config, {"alpha": cloud}, slurm_nodes(cpu_004=IDLE)), NOW).splitlines()
    assert lines[0].split() == ["ACTION", "NODE", "SERVER", "CLOUD", "STATUS", "AGE", "WHY"]
    assert lines[1].split()[:6] == ["delete", "cpu-001", "alpha-1", "alpha", ACTIVE, "3h00m"]
    assert lines[2].split()[:2] == ["wait", "cpu-002"] and "younger than the grace period (1m < 10m)" in lines[2]
    assert lines[3].split()[:2] == ["power_down", "cpu-004"]


def test_empty_groups_are_ours_without_members_whose_job_holds_no_node(tmp_path):
    """Reconcile deletes our empty groups unless Slurm still runs their job; groups with members,
    of another cluster or of a pool not in the config are never touched."""
    config = make_config(tmp_path, CONFIG.replace("    partition: cloud\n", "    partition: cloud\n"
                                                                            "    server_group: affinity\n"))
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    alpha = clouds["alpha"]
    gone = alpha.create_server_group("test-cpu-job5", "affinity")
    alpha.create_server_group("test-cpu-job6", "affinity")  # job 6 still holds a node
    alpha.create_server_group("other-cpu-job5", "affinity")  # another cluster's
    alpha.create_server_group("test-old-job5", "affinity")  # not a pool of ours (any more)
    held = alpha.create_server_group("test-cpu-job7", "affinity")
    alpha.server_groups[held.id] = dataclasses.replace(held, members=("s1",))
    clock = FakeClock(NOW)
    fleet = fleet_of(config, clouds, clock)
    found = reconcile.empty_groups(config, fleet, {"cpu-002": [6]})
    assert found == [("alpha", gone)]
    assert reconcile.delete_groups(fleet, found, null_log()) == [("alpha", gone, None)]
    assert gone.id not in alpha.server_groups and len(alpha.server_groups) == 4


def test_empty_groups_costs_nothing_without_a_pool_using_groups(tmp_path):
    """No pool uses server groups: no cloud is asked for its groups."""
    config = make_config(tmp_path)
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    assert reconcile.empty_groups(config, fleet_of(config, clouds, FakeClock(NOW)), {}) == []
    assert clouds["alpha"].calls == [] and clouds["beta"].calls == []


STRANDED = "DOWN+CLOUD+POWERED_DOWN"


def test_a_node_left_down_at_resume_timeout_by_a_resume_fail_that_never_finished_is_resumed(tmp_path):
    """Found by the chaos soak: a ResumeFailProgram SIGKILLed before it resumed the node left it down~
    with Slurm's "ResumeTimeout reached" (never an `elastic:` reason) for good. Reconcile resumes such
    a node; with a server left it deletes the orphan first and resumes the node in the same pass once
    the delete is accepted. An `elastic:` reason (resume-fail's own verdict) is left alone; a DOWN
    node that is not powered down is the missing case (power_down_force), not this one."""
    config = make_config(tmp_path)
    cloud = MemoryCloud("alpha")
    left = cloud.add("cpu-002", metadata=ours("cpu-002"), created=NOW - GRACE - 1)
    nodes = slurm_nodes()
    for name, state, reason in (("cpu-001", STRANDED, "ResumeTimeout reached"),
                                ("cpu-002", STRANDED, "ResumeTimeout reached"),
                                ("cpu-003", STRANDED, "elastic: repeated-failure: failed to resume 3 times"),
                                ("cpu-004", "DOWN+CLOUD", "ResumeTimeout reached")):
        nodes[name] = NodeState.from_state(name, state, reason=reason)
    repairs = plan_for(config, {"alpha": cloud}, nodes)
    assert summary(repairs) == [("delete", "cpu-002", left.id), ("power_down", "cpu-004", None),
                                ("resume", "cpu-001", None), ("resume", "cpu-002", None)]
    slurm = FakeSlurm(node_states=nodes)
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": cloud}, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock)
    assert summary(result.done) == summary(repairs)
    assert slurm.changes == [(("cpu-001", "cpu-002"), "resume", None),
                             (("cpu-004",), "power_down_force", reconcile.REASON)]
    assert "ResumeFailProgram never finished" in reconcile.describe(next(r for r in repairs if r.action == "resume"))


def test_a_stranded_node_whose_resume_fail_finished_meanwhile_is_not_resumed_again(tmp_path):
    """Between the plan and the node's lock the late ResumeFailProgram resumed it: nothing to do."""
    config = make_config(tmp_path)
    nodes = slurm_nodes()
    nodes["cpu-001"] = NodeState.from_state("cpu-001", STRANDED, reason="ResumeTimeout reached")
    repairs = plan_for(config, {"alpha": MemoryCloud("alpha")}, nodes)
    slurm = FakeSlurm(node_states=slurm_nodes())  # the fresh look: idle~ again
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": MemoryCloud("alpha")}, clock), slurm, repairs,
                             locks=no_locks, log=null_log(), clock=clock)
    assert result.done == [] and [r.action for r, _ in result.skipped] == ["resume"] and slurm.changes == []


def refuse_delete(cloud: MemoryCloud, locked: Server) -> None:
    """The cloud answers a delete of `locked` with 409 (a locked server); other deletes go through."""
    original = cloud.delete_server

    def delete(server_id):
        if server_id == locked.id:
            raise CloudError(CloudErrorKind.CONFLICT, f"Instance {server_id} is locked", cloud=cloud.name, status=409)
        original(server_id)

    cloud.delete_server = delete


def stranded_nodes(*names):
    nodes = slurm_nodes()
    for name in names:
        nodes[name] = NodeState.from_state(name, STRANDED, reason="ResumeTimeout reached")
    return nodes


def test_a_stranded_node_is_resumed_in_the_same_pass_once_every_delete_is_accepted(tmp_path):
    """cpu-001 (pool on alpha and beta) has an orphan on alpha, a server on beta whose delete the
    killed ResumeFailProgram left pending, and one already being deleted; cpu-002's orphan is gone
    (404) by the time reconcile deletes it. Every delete is accepted, both clouds answered: both
    nodes are resumed in this pass, no second pass needed. The pending delete is forgotten once
    accepted, as before (the server being deleted is no longer a threat: no resume adopts it)."""
    config = make_config(tmp_path)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    orphan = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 1)
    condemned = beta.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 30)  # pending: no grace
    going = beta.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 1, task_state="deleting")
    vanishing = alpha.add("cpu-002", metadata=ours("cpu-002"), created=NOW - GRACE - 1)
    clouds = {"alpha": alpha, "beta": beta}
    history = MemoryHistory()
    history.add_pending_deletes({"cpu-001": {"beta": "resume-fail: under way"}}, NOW - 100)
    nodes = stranded_nodes("cpu-001", "cpu-002")
    servers = [s for cloud in clouds.values() for s in cloud.list_servers(config.cluster)]
    repairs = reconcile.plan(status.rows(config, servers, nodes, pending=history.pending_deletes()), NOW, GRACE,
                             pending=history.pending_deletes())
    assert summary(repairs) == sorted([("delete", "cpu-001", orphan.id), ("delete", "cpu-001", condemned.id),
                                       ("delete", "cpu-002", vanishing.id), ("resume", "cpu-001", None),
                                       ("resume", "cpu-002", None)])
    resume = next(r for r in repairs if r.action == "resume" and r.node == "cpu-001")
    assert resume.after == tuple(sorted([orphan.id, condemned.id])) and going.id not in resume.after
    assert "once its servers' deletes are accepted" in reconcile.describe(resume)

    def gone_behind_our_back(fake):  # the fresh look has listed the clouds: the DELETE will get a 404
        alpha.servers.pop(vanishing.id, None)

    slurm = FakeSlurm(node_states=nodes, on_read=gone_behind_our_back)
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, clouds, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock, history=history)
    assert summary(result.done) == summary(repairs) and result.failed == result.skipped == []
    assert slurm.changes == [(("cpu-001", "cpu-002"), "resume", None)]
    assert ("delete", vanishing.id) in alpha.calls and ("delete", going.id) not in beta.calls
    assert history.pending_deletes() == {}


def test_a_stranded_node_waits_with_its_servers_delete_in_the_grace_period(tmp_path):
    """The leftover server is younger than the grace period: its delete waits, and the resume with it."""
    config = make_config(tmp_path)
    alpha = MemoryCloud("alpha")
    young = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 60)
    repairs = plan_for(config, {"alpha": alpha}, stranded_nodes("cpu-001"))
    assert [(r.action, r.ready, r.server.id if r.server else None) for r in repairs] == [
        ("delete", False, young.id), ("resume", False, None)]
    resume = repairs[1]
    assert resume.wait.startswith("its server's delete waits: younger than the grace period")


def test_a_stranded_node_whose_delete_fails_is_not_resumed_and_keeps_its_pending_delete(tmp_path):
    """Of two stranded nodes, cpu-002's delete is refused (locked) and cpu-003's pending delete on
    beta fails too: neither is resumed (the next pass retries), cpu-003 keeps its pending delete;
    cpu-001, whose delete is accepted, is resumed in this pass."""
    config = make_config(tmp_path)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 1)
    locked = alpha.add("cpu-002", metadata=ours("cpu-002"), created=NOW - GRACE - 1)
    stuck = beta.add("cpu-003", metadata=ours("cpu-003"), created=NOW - 30)
    clouds = {"alpha": alpha, "beta": beta}
    history = MemoryHistory()
    history.add_pending_deletes({"cpu-003": {"beta": "resume-fail: under way"}}, NOW - 100)
    nodes = stranded_nodes("cpu-001", "cpu-002", "cpu-003")
    servers = [s for cloud in clouds.values() for s in cloud.list_servers(config.cluster)]
    repairs = reconcile.plan(status.rows(config, servers, nodes, pending=history.pending_deletes()), NOW, GRACE,
                             pending=history.pending_deletes())
    refuse_delete(alpha, locked)
    beta.fail_next("delete", CloudErrorKind.CONFLICT, message="task_state is migrating")
    slurm = FakeSlurm(node_states=nodes)
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, clouds, clock), slurm, repairs, locks=no_locks,
                             log=null_log(), clock=clock, history=history)
    assert slurm.changes == [(("cpu-001",), "resume", None)]
    assert sorted((r.action, r.node) for r, _ in result.failed) == [("delete", "cpu-002"), ("delete", "cpu-003")]
    skipped = {r.node: why for r, why in result.skipped}
    assert sorted(skipped) == ["cpu-002", "cpu-003"] and all(r.action == "resume" for r, _ in result.skipped)
    assert skipped["cpu-002"] == f"the delete of {locked.id} was not accepted: resumed by a later pass"
    assert stuck.id in skipped["cpu-003"]
    assert set(history.pending_deletes()) == {"cpu-003"} and set(history.pending_deletes()["cpu-003"]) == {"beta"}


SOLO = CONFIG.replace("reconcile: {grace: 600}\n", """\
  solo:
    nodes: solo-[1-2]
    slurm: {cpus: 1, real_memory: 1800}
    boot: {flavor: m1.small, image: debian-12}
    clouds:
      - {cloud: alpha, network: private}
reconcile: {grace: 600}
""")


def test_a_stranded_node_with_a_cloud_of_its_pool_not_answering_is_resumed_with_a_pending_delete_there(tmp_path):
    """beta cannot be listed: cpu-001 (pool on alpha and beta) may have a server there. Its orphan on
    alpha is deleted and the node is resumed in this pass with a pending delete on beta, so no
    resume adopts a server left there and the node can boot on alpha meanwhile; solo-1 (pool on
    alpha only) gets none. Under the lock, a cloud that stops answering after the plan saw it
    answer skips the RESUME, and says so."""
    config = make_config(tmp_path, SOLO)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    orphan = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - GRACE - 1)
    solo = alpha.add("solo-1", metadata=ours("solo-1", pool="solo"), created=NOW - GRACE - 1)
    beta.fail_next("list", CloudErrorKind.UNREACHABLE, times=1000, message="connection refused")
    clouds = {"alpha": alpha, "beta": beta}
    nodes = stranded_nodes("cpu-001", "cpu-002")
    nodes["solo-1"] = NodeState.from_state("solo-1", STRANDED, reason="ResumeTimeout reached")
    clock = FakeClock(NOW)
    fleet = fleet_of(config, clouds, clock)
    snapshot = status.collect(config, fleet, FakeSlurm(node_states=nodes), need_slurm=True)
    assert set(snapshot.unseen) == {"beta"}
    repairs = reconcile.plan(status.rows(config, snapshot.servers, snapshot.nodes, unseen=snapshot.unseen), NOW,
                             GRACE, unseen=snapshot.unseen)
    assert sorted((r.action, r.node, r.server.id if r.server else None, r.pending_on) for r in repairs) == sorted([
        ("delete", "cpu-001", orphan.id, ()), ("delete", "solo-1", solo.id, ()),
        ("resume", "cpu-001", None, ("beta",)), ("resume", "cpu-002", None, ("beta",)), ("resume", "solo-1", None, ())])
    history = MemoryHistory()
    slurm = FakeSlurm(node_states=nodes)
    result = reconcile.apply(config, fleet, slurm, repairs, locks=no_locks, log=null_log(), clock=clock,
                             history=history)
    assert sorted(n for names, state, _ in slurm.changes if state == "resume" for n in names) == [
        "cpu-001", "cpu-002", "solo-1"]
    assert ("delete", orphan.id) in alpha.calls and not result.skipped and not result.failed
    assert {node: set(clouds) for node, clouds in history.pending_deletes().items()} == {
        "cpu-001": {"beta"}, "cpu-002": {"beta"}}
    # Under the lock: the plan saw beta answer, the fresh look does not.
    planned = [reconcile.Repair("resume", "cpu-001", reconcile.STRANDED)]
    slurm = FakeSlurm(node_states=nodes)
    result = reconcile.apply(config, fleet, slurm, planned, locks=no_locks, log=null_log(), clock=clock,
                             history=MemoryHistory())
    assert slurm.changes == []
    assert [(r.action, r.node, why) for r, why in result.skipped] == [
        ("resume", "cpu-001", "beta did not answer the look under the node's lock: left for a later pass")]


# ---- floating IPs ----------------------------------------------------------------------------------

FLOATING = CONFIG.replace("      - {cloud: alpha, network: private}",
                          "      - {cloud: alpha, network: private, floating_ip: public}")


def ip(cloud="alpha", node="cpu-001", *, port=None, server=None, created=NOW - GRACE - 1, ident="ip-1"):
    return FloatingIp(id=ident, address="127.20.0.9", cloud=cloud, node=node, port_id=port, server_id=server,
                      created=created)


def test_plan_floating_ips_deletes_ours_that_no_live_server_of_ours_holds():
    """Detached, or on a port of a server that is not a live one of ours (gone, deleting, someone
    else's), past the grace period: due. On a live server of ours: nothing. Younger than the grace
    period, or of unknown age: waits."""
    live = Server(id="s1", name="cpu-001", status=ACTIVE, cloud="alpha")
    deleting = Server(id="s2", name="cpu-002", status=ACTIVE, cloud="alpha", task_state="deleting")
    twin = Server(id="s1", name="cpu-001", status=ACTIVE, cloud="beta")  # the same id on another cloud
    ips = [ip(port="p1", server="s1", ident="held"), ip(ident="detached"),
           ip(port="p2", server="s2", ident="on-deleting"), ip(port="p3", server="x", ident="on-foreign"),
           ip(port="p4", server=None, ident="port-gone"), ip(created=NOW - 60, ident="young"),
           ip(created=None, ident="unknown"), ip(cloud="beta", port="p5", server="s9", ident="beta-stray")]
    repairs = reconcile.plan_floating_ips(ips, [live, deleting, twin], NOW, GRACE)
    got = {r.ip.id: (r.problem, r.ready) for r in repairs}
    assert got == {"detached": (reconcile.DETACHED, True), "on-deleting": (reconcile.STRAY, True),
                   "on-foreign": (reconcile.STRAY, True), "port-gone": (reconcile.STRAY, True),
                   "young": (reconcile.DETACHED, False), "unknown": (reconcile.DETACHED, False),
                   "beta-stray": (reconcile.STRAY, True)}
    waits = {r.ip.id: r.wait for r in repairs}
    assert waits["young"].startswith("younger than the grace period") and waits["unknown"] == "age unknown"


def test_plan_floating_ips_waits_for_the_ip_of_a_server_a_suspend_under_way_is_deleting():
    """An IP on its node's server that is being deleted while a suspend (or resume-fail) of the node
    is under way on that cloud waits: that run sweeps it once the server is gone. Once the run's
    mark says what stopped it (the server still there at its timeout), or is gone, or is on another
    cloud, or the IP is another node's or detached, it is due as before."""
    going = Server(id="s2", name="cpu-002", status=ACTIVE, cloud="alpha", task_state="deleting")
    ips = [ip(node="cpu-002", port="p2", server="s2", ident="on-going"),
           ip(node="cpu-003", port="p3", server="s2", ident="other-node"),
           ip(node="cpu-002", ident="detached")]

    def plan(pending):
        return {r.ip.id: r.wait for r in reconcile.plan_floating_ips(ips, [going], NOW, GRACE, pending=pending)}

    under_way = {"cpu-002": {"alpha": {"since": NOW - 5, "why": "suspend: under way"}}}
    waits = plan(under_way)
    assert waits["on-going"] == ("its server is being deleted (suspend: under way); that run deletes the IP once "
                                 "the server is gone")
    assert waits["other-node"] == "" and waits["detached"] == ""
    assert plan({"cpu-002": {"alpha": {"since": NOW - 5, "why": "resume-fail: under way"}}})["on-going"] != ""
    for settled in ({}, None, {"cpu-002": {"beta": {"since": NOW - 5, "why": "suspend: under way"}}},
                    {"cpu-002": {"alpha": {"since": NOW - 5, "why": "suspend: still there after 60s"}}}):
        assert plan(settled)["on-going"] == "", settled


def test_leaked_floating_ips_asks_only_floating_clouds_ips_before_servers_and_never_lists_foreign_ips(tmp_path):
    """Only clouds a pool takes floating IPs from are asked; each lists its IPs first and then our
    servers (so a server that got its IP in between is seen); IPs without our cluster's mark are
    not ours and never planned."""
    config = make_config(tmp_path, FLOATING)
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    alpha = clouds["alpha"]
    server = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 5000)
    alpha.attach_floating_ip(server, "public")
    leaked = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-002"), created=NOW - GRACE - 1)
    for description in ("", "a human's", floating_ip_mark("other", "cpu-003")):
        alpha.add_floating_ip(description=description, created=0.0)
    alpha.calls.clear()
    repairs, unseen = reconcile.leaked_floating_ips(config, fleet_of(config, clouds, FakeClock(NOW)), NOW)
    assert [(r.ip.id, r.ip.node, r.problem, r.ready) for r in repairs] == [(leaked.id, "cpu-002", "detached", True)]
    assert unseen == {} and clouds["beta"].calls == []
    assert [op for op, _ in alpha.calls] == ["list_floating_ips", "list"]


def test_leaked_floating_ips_reports_a_cloud_that_does_not_answer(tmp_path):
    """A cloud whose floating IPs cannot be listed gets no repair and is named."""
    config = make_config(tmp_path, FLOATING)
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    clouds["alpha"].add_floating_ip(description=floating_ip_mark("test", "cpu-002"), created=0.0)
    clouds["alpha"].fail_next("list_floating_ips", CloudErrorKind.UNREACHABLE, times=5)
    repairs, unseen = reconcile.leaked_floating_ips(config, fleet_of(config, clouds, FakeClock(NOW)), NOW)
    assert repairs == [] and set(unseen) == {"alpha"}


def test_delete_floating_ips_rechecks_and_deletes_only_what_is_still_leaked(tmp_path):
    """Applying re-lists: an IP deleted meanwhile (a suspend released it) is skipped, a still-leaked
    one is deleted, a failing delete is reported FAILED; waiting ones are not touched."""
    config = make_config(tmp_path, FLOATING)
    clouds = {"alpha": MemoryCloud("alpha"), "beta": MemoryCloud("beta")}
    alpha = clouds["alpha"]
    mark = floating_ip_mark("test", "cpu-002")
    first, second, third = (alpha.add_floating_ip(description=mark, created=NOW - GRACE - 1) for _ in range(3))
    young = alpha.add_floating_ip(description=mark, created=NOW - 1)
    clock = FakeClock(NOW)
    fleet = fleet_of(config, clouds, clock)
    repairs, _ = reconcile.leaked_floating_ips(config, fleet, NOW)
    assert len(repairs) == 4
    del alpha.floating_ips[first.id]
    alpha.fail_next("delete_floating_ip", CloudErrorKind.CONFLICT, message="in use")
    outcome = reconcile.delete_floating_ips(config, fleet, repairs, log=null_log(), clock=clock)
    results = {r.ip.id: (result, detail) for r, result, detail in outcome}
    assert results[first.id][0] == "skipped" and "no longer needed" in results[first.id][1]
    assert {results[second.id][0], results[third.id][0]} == {"FAILED", "done"}
    assert young.id not in results and young.id in alpha.floating_ips
    assert len(alpha.floating_ips) == 2
    table = reconcile.render_ip_plan(repairs, NOW)
    assert "detached: its server is gone" in table and "not yet: younger than the grace period" in table


def test_a_pending_delete_stays_while_one_of_the_nodes_servers_on_that_cloud_is_not_deleted(tmp_path):
    """Two servers of powered-down cpu-001 on alpha under a pending delete: one delete is accepted,
    the other refused (locked). The pending entry on alpha stays, so no resume adopts the server
    that is left (its slurmd predates the next power-up); the next pass retries it."""
    config = make_config(tmp_path)
    alpha = MemoryCloud("alpha")
    alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 30)
    locked = alpha.add("cpu-001", metadata=ours("cpu-001"), created=NOW - 20)
    history = MemoryHistory()
    history.add_pending_deletes({"cpu-001": {"alpha": "suspend: delete failed"}}, NOW - 100)
    nodes = slurm_nodes()
    servers = alpha.list_servers(config.cluster)
    repairs = reconcile.plan(status.rows(config, servers, nodes, pending=history.pending_deletes()), NOW, GRACE,
                             pending=history.pending_deletes())
    assert sorted(r.server.id for r in repairs if r.action == "delete") == sorted(s.id for s in servers)
    refuse_delete(alpha, locked)
    clock = FakeClock(NOW)
    result = reconcile.apply(config, fleet_of(config, {"alpha": alpha}, clock), FakeSlurm(node_states=nodes), repairs,
                             locks=no_locks, log=null_log(), clock=clock, history=history)
    assert [r.server.id for r, _ in result.failed] == [locked.id]
    assert set(history.pending_deletes()) == {"cpu-001"} and set(history.pending_deletes()["cpu-001"]) == {"alpha"}


def test_a_stranded_node_is_not_resumed_when_its_pending_delete_on_a_silent_cloud_cannot_be_saved(tmp_path):
    """beta does not answer and the history cannot save (its lock held, the disk full: History only
    warns): resuming cpu-001 would leave nothing to stop a later resume adopting a server on beta,
    so the RESUME waits for a later pass; solo-1, whose pool does not use beta, is resumed."""

    class Unsaved(MemoryHistory):
        def add_pending_deletes(self, entries, now):
            pass

    config = make_config(tmp_path, SOLO)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    beta.fail_next("list", CloudErrorKind.UNREACHABLE, times=1000, message="connection refused")
    nodes = stranded_nodes("cpu-001")
    nodes["solo-1"] = NodeState.from_state("solo-1", STRANDED, reason="ResumeTimeout reached")
    clock = FakeClock(NOW)
    fleet = fleet_of(config, {"alpha": alpha, "beta": beta}, clock)
    snapshot = status.collect(config, fleet, FakeSlurm(node_states=nodes), need_slurm=True)
    repairs = reconcile.plan(status.rows(config, snapshot.servers, snapshot.nodes, unseen=snapshot.unseen), NOW,
                             GRACE, unseen=snapshot.unseen)
    slurm = FakeSlurm(node_states=nodes)
    result = reconcile.apply(config, fleet, slurm, repairs, locks=no_locks, log=null_log(), clock=clock,
                             history=Unsaved())
    assert slurm.changes == [(("solo-1",), "resume", None)]
    assert [(r.node, why) for r, why in result.skipped] == [
        ("cpu-001", "its pending delete on beta could not be saved: resumed by a later pass")]


def test_an_orphan_on_a_cloud_its_nodes_pool_no_longer_lists_is_deleted(tmp_path):
    """gpu-1's pool lists only beta, but a server of gpu-1 runs on alpha (the YAML dropped alpha
    from the pool): the first look lists every cloud and plans its delete; the look under the lock
    lists alpha for gpu-1 too, so the delete is confirmed and done instead of skipped every pass."""
    config = make_config(tmp_path)
    alpha, beta = MemoryCloud("alpha"), MemoryCloud("beta")
    left = alpha.add("gpu-1", metadata=ours("gpu-1", pool="gpu"), created=NOW - GRACE - 1)
    clouds = {"alpha": alpha, "beta": beta}
    nodes = slurm_nodes()
    clock = FakeClock(NOW)
    fleet = fleet_of(config, clouds, clock)
    snapshot = status.collect(config, fleet, FakeSlurm(node_states=nodes), need_slurm=True)
    repairs = reconcile.plan(status.rows(config, snapshot.servers, snapshot.nodes, unseen=snapshot.unseen), NOW,
                             GRACE, unseen=snapshot.unseen)
    assert summary(repairs) == [("delete", "gpu-1", left.id)]
    result = reconcile.apply(config, fleet, FakeSlurm(node_states=nodes), repairs, locks=no_locks, log=null_log(),
                             clock=clock, history=MemoryHistory())
    assert [(r.action, r.node) for r in result.done] == [("delete", "gpu-1")] and not result.skipped
    assert alpha.list_servers(config.cluster) == []
