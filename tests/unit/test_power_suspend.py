"""Suspend and ResumeFail decisions, with memory clouds and a recording Slurm."""

from __future__ import annotations

from elastic.cloud import ACTIVE, BUILDING, floating_ip_mark
from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.errors import CloudErrorKind
from elastic.power.resume_fail import resume_fail
from elastic.power.suspend import suspend
from elastic.served import Served

from tests.support.power import CONFIG, held_by_another_run, make_services


def _meta(node: str, pool: str = "cpu") -> dict[str, str]:
    return {META_CLUSTER: "test", META_NODE: node, META_POOL: pool}


def test_suspend_deletes_servers_on_every_cloud(tmp_path):
    """Suspend deletes the nodes' servers wherever they are and changes no Slurm state."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    a = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    b = clouds["beta"].add("cpu-002", metadata=_meta("cpu-002"))
    outcome = suspend(["cpu-001", "cpu-002"], svc)
    assert outcome.exit_code == 0
    assert ("delete", a.id) in clouds["alpha"].calls and ("delete", b.id) in clouds["beta"].calls
    assert clouds["alpha"].live() == [] and clouds["beta"].live() == [] and slurm.states == []


def test_suspend_of_node_without_server_is_fine(tmp_path):
    """A node with no server suspends cleanly: idempotent, exit 0."""
    svc, clouds, _, _ = make_services(tmp_path)
    assert suspend(["cpu-003"], svc).exit_code == 0
    assert not any(op == "delete" for op, _ in clouds["alpha"].calls)


def test_suspend_reaches_nodes_whose_pool_was_removed(tmp_path):
    """A server of ours for a node in no pool (pool removed from the YAML) is still deleted."""
    svc, clouds, _, _ = make_services(tmp_path)
    gone = clouds["alpha"].add("old-7", metadata=_meta("old-7", pool="old"))
    assert suspend(["old-7"], svc).exit_code == 0
    assert ("delete", gone.id) in clouds["alpha"].calls


def test_suspend_never_deletes_a_server_of_another_cluster(tmp_path):
    """A same-named server without our cluster's metadata survives suspend."""
    svc, clouds, _, _ = make_services(tmp_path)
    stranger = clouds["alpha"].add("cpu-001", metadata={META_CLUSTER: "someone-else"})
    suspend(["cpu-001"], svc)
    assert ("delete", stranger.id) not in clouds["alpha"].calls


def test_suspend_deletes_every_duplicate(tmp_path):
    """Two servers with the node's name are both deleted."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"), status=BUILDING)
    suspend(["cpu-001"], svc)
    assert clouds["alpha"].live() == []


def test_suspend_defers_a_delete_the_cloud_keeps_failing_and_the_node_stays_powered_down(tmp_path):
    """A delete that keeps failing with 5xx is the cloud's trouble: the node is not put DOWN, the
    delete is pending, and the next suspend that reaches the cloud carries it out."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    clouds["alpha"].fail_next("delete", CloudErrorKind.TRANSIENT, times=4)  # every try of one run
    outcome = suspend(["cpu-001"], svc)
    assert outcome.exit_code == 0 and outcome.deferred == {"cpu-001": ["alpha"]}
    assert slurm.states == [] and "alpha" in svc.history.pending_deletes()["cpu-001"]
    outcome = suspend(["cpu-001"], svc)
    assert outcome.deferred == {} and clouds["alpha"].live() == [] and svc.history.pending_deletes() == {}


def test_suspend_puts_a_node_down_when_the_cloud_refuses_its_delete(tmp_path):
    """A delete the cloud answers with 409 (a locked server) leaves the node DOWN with an elastic: reason."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    clouds["alpha"].fail_next("delete", CloudErrorKind.CONFLICT, message="Instance is locked")
    outcome = suspend(["cpu-001"], svc)
    assert outcome.exit_code == 1
    state, reason = slurm.state_of("cpu-001")
    assert state == "down" and reason.startswith("elastic: conflict: delete on alpha refused")


def test_suspend_with_unreachable_cloud_defers_only_nodes_that_use_it(tmp_path):
    """A cloud that cannot be listed defers the deletes of nodes whose pool uses it, puts no node
    DOWN, and leaves nodes of pools that do not use it untouched."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["beta"].add("gpu-1", metadata={**_meta("gpu-1"), META_POOL: "gpu"})
    clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    clouds["alpha"].fail_next("list", CloudErrorKind.UNREACHABLE, times=10)
    outcome = suspend(["cpu-001", "gpu-1"], svc)
    assert outcome.deferred == {"cpu-001": ["alpha"]} and outcome.failed == {} and slurm.states == []
    assert clouds["beta"].live() == [] and svc.history.pending_deletes().keys() == {"cpu-001"}


def test_resume_fail_deletes_and_returns_node_to_service(tmp_path):
    """ResumeFail deletes the node's server and sets state=resume so the node is idle~ again."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].add("cpu-001", status=ACTIVE, metadata=_meta("cpu-001"))
    outcome = resume_fail(["cpu-001"], svc)
    assert outcome.exit_code == 0 and clouds["alpha"].live() == []
    assert slurm.state_of("cpu-001") == ("resume", None)


def test_resume_fail_repeated_failures_leave_node_down(tmp_path):
    """A node that failed max_failures times within the window stays DOWN with a reason."""
    svc, _, slurm, clock = make_services(tmp_path)
    resume_fail(["cpu-001"], svc)
    clock.now += 60
    outcome = resume_fail(["cpu-001"], svc)
    state, reason = slurm.state_of("cpu-001")
    assert state == "down" and "failed to resume 2 times" in reason and outcome.exit_code == 1


def test_resume_fail_window_forgets_old_failures(tmp_path):
    """Failures older than the window do not count: the node returns to service."""
    svc, _, slurm, clock = make_services(tmp_path)
    resume_fail(["cpu-001"], svc)
    clock.now += 601
    resume_fail(["cpu-001"], svc)
    assert slurm.state_of("cpu-001") == ("resume", None)


class _Killed(BaseException):
    """A SIGKILL in the middle of a run: nothing after it runs, no handler sees it."""


def test_a_suspend_killed_before_its_deletes_leaves_them_pending_and_the_next_resume_does_not_adopt(tmp_path,
                                                                                                    monkeypatch):
    """Found by the chaos soak: a suspend SIGKILLed before it deleted a node's server left an ACTIVE
    server and no trace; the node went idle~ at SuspendTimeout and the next resume adopted that VM,
    whose slurmd predates the power-up, so Slurm waited for it until ResumeTimeout. The intent is
    written before the first look, so the next resume deletes the server and boots a new one."""
    from elastic.power.resume import resume

    svc, clouds, _, _ = make_services(tmp_path)
    old = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"), status=ACTIVE)

    def killed(server_id):
        raise _Killed()

    monkeypatch.setattr(clouds["alpha"], "delete_server", killed)
    try:
        suspend(["cpu-001"], svc)
    except _Killed:
        pass
    assert set(svc.history.pending_deletes()["cpu-001"]) == {"alpha", "beta"}
    monkeypatch.undo()
    outcome = resume(["cpu-001"], svc)
    assert outcome.exit_code == 0, outcome.failed
    assert ("delete", old.id) in clouds["alpha"].calls
    assert [s.id for s in clouds["alpha"].live() + clouds["beta"].live()] != [old.id]
    assert svc.history.pending_deletes() == {}


def test_a_suspend_killed_while_another_run_holds_the_lock_leaves_its_deletes_pending(tmp_path):
    """Found by the chaos soak: a suspend killed while it waited for a node's lock (a reconcile held
    it) had recorded the release but not the deletes; the node went idle~ at SuspendTimeout, and the
    next resume adopted its VM, whose slurmd predates the power-up, so Slurm waited for it until
    ResumeTimeout. The release and the deletes are written together, before any lock."""
    from elastic.power.resume import resume

    svc, clouds, _, clock = make_services(tmp_path)
    old = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"), status=ACTIVE)
    free_locks = svc.locks
    svc.locks, _ = held_by_another_run({"cpu-001"}, for_takes=10**6)

    def killed(seconds):
        raise _Killed()

    svc.sleep = killed  # while it waits for the busy lock
    try:
        suspend(["cpu-001"], svc)
    except _Killed:
        pass
    assert ("delete", old.id) not in clouds["alpha"].calls
    assert set(svc.history.pending_deletes()["cpu-001"]) == {"alpha", "beta"}
    svc.locks, svc.sleep = free_locks, clock.sleep
    clock.sleep(60)  # SuspendTimeout; then Slurm powers the node up again
    outcome = resume(["cpu-001"], svc)
    assert outcome.exit_code == 0, outcome.failed
    assert ("delete", old.id) in clouds["alpha"].calls
    assert old not in clouds["alpha"].live() + clouds["beta"].live()
    assert svc.history.pending_deletes() == {}


def test_a_suspend_that_comes_while_a_resume_looks_keeps_its_deletes_when_both_are_killed(tmp_path):
    """Found in review: a suspend of cpu-001 recorded its release and deletes (before any lock) while
    a resume of it, past its release check, listed the clouds; the resume settled those deletes as
    its own and created a server. Killed before its first poll (and the suspend while it waited for
    the lock), it left a server with no pending delete, and the next resume adopted it (its slurmd
    predates that power-up). The resume now leaves a later release's deletes pending, and cancels
    the node as if it had seen the release first."""
    from contextlib import contextmanager
    from dataclasses import replace

    from elastic.power.resume import resume

    svc, clouds, _, clock = make_services(tmp_path)
    busy_locks, _ = held_by_another_run({"cpu-001"}, for_takes=10**6)

    def killed(seconds):
        raise _Killed()

    suspending = replace(svc, locks=busy_locks, sleep=killed)  # its lock is the resume's; killed waiting
    original_list = clouds["alpha"].list_servers

    def suspend_during_the_first_list(cluster, names=None):
        if not svc.history.releases():
            clock.now += 1  # Slurm sends the suspend a moment after the resume
            try:
                suspend(["cpu-001"], suspending)
            except _Killed:
                pass
        return original_list(cluster, names)

    @contextmanager
    def killed_after_its_first_round(names):
        yield frozenset(names)
        raise _Killed()  # the resume dies before its first poll

    clouds["alpha"].list_servers = suspend_during_the_first_list
    svc.locks = killed_after_its_first_round
    try:
        resume(["cpu-001"], svc)
    except _Killed:
        pass
    assert set(svc.history.pending_deletes()["cpu-001"]) == {"alpha", "beta"}
    left = {s.id for s in clouds["alpha"].live() + clouds["beta"].live()}
    clouds["alpha"].list_servers = original_list
    svc.locks = make_services(tmp_path)[0].locks
    clock.sleep(60)  # SuspendTimeout; then Slurm powers the node up again
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"}, outcome.failed
    assert not left & {s.id for s in clouds["alpha"].live() + clouds["beta"].live()}
    assert svc.history.pending_deletes() == {}


def test_a_suspend_that_finishes_leaves_nothing_pending(tmp_path):
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["beta"].add("cpu-002", metadata=_meta("cpu-002"))
    assert suspend(["cpu-001", "cpu-002"], svc).exit_code == 0
    assert svc.history.pending_deletes() == {}


def test_suspend_deletes_the_free_nodes_first_and_comes_back_for_a_busy_one(tmp_path):
    """cpu-002's lock is held by another run for a while: cpu-001's server goes at once, cpu-002's
    once its lock is free, in the same run; nothing is left pending."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    a = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    b = clouds["alpha"].add("cpu-002", metadata=_meta("cpu-002"))
    svc.locks, takes = held_by_another_run({"cpu-002"}, for_takes=3)
    outcome = suspend(["cpu-001", "cpu-002"], svc)
    deletes = [server_id for op, server_id in clouds["alpha"].calls if op == "delete"]
    assert deletes == [a.id, b.id] and clouds["alpha"].live() == []
    assert outcome.exit_code == 0 and not outcome.deferred and len(takes) == 4
    assert svc.history.pending_deletes() == {} and slurm.states == []


def test_suspend_leaves_a_node_locked_past_timeouts_lock_powered_down_with_its_delete_pending(tmp_path):
    """A lock held past timeouts.lock is not the node's fault: no Slurm state change, exit 0; the
    node's deletes are pending on every cloud of its pool (the next run that locks it, or
    reconcile, carries them out), and its release is recorded (a resume booting it cancels it)."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    started = clock()
    b = clouds["alpha"].add("cpu-002", metadata=_meta("cpu-002"))
    svc.locks, _ = held_by_another_run({"cpu-002"}, for_takes=10**6)
    outcome = suspend(["cpu-002"], svc)
    assert outcome.exit_code == 0 and outcome.deferred == {"cpu-002": ["alpha", "beta"]}
    assert clouds["alpha"].live() == [b] and slurm.states == []
    assert set(svc.history.pending_deletes()["cpu-002"]) == {"alpha", "beta"}
    assert svc.history.releases()["cpu-002"] == started
    assert clock() - started >= svc.config.timeouts.lock


_FLOATING = CONFIG.replace("      - {cloud: alpha, network: private}\n",
                           "      - {cloud: alpha, network: private, floating_ip: public}\n")


def test_suspend_releases_the_ip_first_and_sweeps_the_nodes_detached_ips_once_the_server_is_gone(tmp_path):
    """On a pool taking floating IPs, suspend releases the server's IP before deleting it; once the
    server is gone, one list of the cloud's IPs finds the node's detached IP (a resume attached it
    after the release) and deletes it. Another node's detached IP, an unmarked one and another
    cluster's stay; a pool without floating IPs costs no list."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_FLOATING)
    alpha = clouds["alpha"]
    server = alpha.add("cpu-001", metadata=_meta("cpu-001"))
    alpha.attach_floating_ip(server, "public")
    raced = alpha.add_floating_ip(description=floating_ip_mark("test", "cpu-001"))
    kept = [alpha.add_floating_ip(description=d).id for d in (floating_ip_mark("test", "cpu-002"), "",
                                                             floating_ip_mark("other", "cpu-001"))]
    alpha.calls.clear()
    assert suspend(["cpu-001"], svc).exit_code == 0
    ops = [op for op, _ in alpha.calls]
    assert ops.index("release_floating_ips") < ops.index("delete") < ops.index("list_floating_ips")
    assert ("delete_floating_ip", raced.id) in alpha.calls and sorted(alpha.floating_ips) == sorted(kept)
    beta = clouds["beta"]
    beta.add("gpu-1", metadata=_meta("gpu-1", pool="gpu"))
    assert suspend(["gpu-1"], svc).exit_code == 0
    assert not any(op in ("list_floating_ips", "release_floating_ips") for op, _ in beta.calls)


def test_a_failed_sweep_is_logged_and_the_suspend_still_succeeds(tmp_path):
    """The sweep is a courtesy (reconcile is the net): a cloud refusing the IP list fails nothing."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_FLOATING)
    clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    clouds["alpha"].fail_next("list_floating_ips", CloudErrorKind.CONFLICT)
    outcome = suspend(["cpu-001"], svc)
    assert outcome.exit_code == 0 and not outcome.deferred and clouds["alpha"].live() == []


def _list_waits_for_a_delete(cloud, seconds: float = 5.0) -> list[bool]:
    """Make the cloud's lists wait (up to `seconds`) for a delete to arrive; returns the list in
    which each list notes whether one had."""
    import threading

    deleted, waited = threading.Event(), []
    list_servers, delete_server = cloud.list_servers, cloud.delete_server

    def delete(server_id):
        deleted.set()
        return delete_server(server_id)

    def listing(cluster, names=None):
        waited.append(deleted.wait(seconds))
        return list_servers(cluster, names)

    cloud.list_servers, cloud.delete_server = listing, delete
    return waited


def test_suspend_deletes_the_server_a_resume_served_the_node_with_while_it_looks(tmp_path):
    """Resume notes each served node's server; suspend deletes it at once, beside the look for
    any other server of the node, instead of after it (a one-node suspend waits a round trip
    less), and deletes it once."""
    from elastic.power.resume import resume

    svc, clouds, _, _ = make_services(tmp_path)
    assert resume(["cpu-001", "cpu-002"], svc).exit_code == 0
    served = {s.name: s.id for s in clouds["alpha"].live()}
    clouds["alpha"].calls.clear()
    waited = _list_waits_for_a_delete(clouds["alpha"])
    assert suspend(["cpu-001"], svc).exit_code == 0
    assert waited[0] is True
    assert clouds["alpha"].calls.count(("delete", served["cpu-001"])) == 1
    assert [s.name for s in clouds["alpha"].live()] == ["cpu-002"]
    assert "cpu-001" not in svc.history.pending_deletes()
    assert svc.served.take("test", ["cpu-001", "cpu-002"]) == {"cpu-002": Served("alpha", served["cpu-002"], "cpu")}


def test_suspend_finds_the_other_servers_of_a_node_whose_noted_server_is_gone(tmp_path):
    """The noted server may be gone (its delete answers 404, which is fine) and another one of the
    node's may be there (a duplicate from a killed run): the look finds it and it is deleted too."""
    svc, clouds, _, _ = make_services(tmp_path)
    other = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
    svc.served.record("test", {"cpu-001": Served("alpha", "gone-long-ago", "cpu")})
    assert suspend(["cpu-001"], svc).exit_code == 0
    assert ("delete", "gone-long-ago") in clouds["alpha"].calls and ("delete", other.id) in clouds["alpha"].calls
    assert clouds["alpha"].live() == [] and svc.history.pending_deletes() == {}


def test_a_noted_server_whose_delete_is_refused_is_deleted_again_after_the_look(tmp_path):
    """A delete ahead that fails is left to the look: once refused (409), the usual delete after the
    look goes through; refused twice, the node is DOWN as for any refused delete."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    for refusals, code in ((1, 0), (2, 1)):
        server = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
        svc.served.record("test", {"cpu-001": Served("alpha", server.id, "cpu")})
        clouds["alpha"].fail_next("delete", CloudErrorKind.CONFLICT, times=refusals, message="Instance is locked")
        assert suspend(["cpu-001"], svc).exit_code == code
        assert clouds["alpha"].calls.count(("delete", server.id)) == 2
    assert slurm.states[0][:2] == (("cpu-001",), "down") and "locked" in slurm.states[0][2]


def test_suspend_deletes_nothing_ahead_where_something_must_come_first_or_the_pool_changed(tmp_path):
    """A pool with floating IPs (released before the delete) or a server group (found before its
    member goes), or a server noted for another pool than the node's now: the noted server is
    deleted after the look, as before."""
    grouped = CONFIG.replace("  gpu:\n", "    server_group: affinity\n  gpu:\n")
    for index, (config, pool) in enumerate(((_FLOATING, "cpu"), (grouped, "cpu"), (CONFIG, "old"))):
        (tmp_path / str(index)).mkdir()
        svc, clouds, _, _ = make_services(tmp_path / str(index), config_text=config)
        server = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"))
        svc.served.record("test", {"cpu-001": Served("alpha", server.id, pool)})
        assert suspend(["cpu-001"], svc).exit_code == 0
        ops = [op for op, _ in clouds["alpha"].calls]
        assert ops.index("list") < ops.index("delete") and clouds["alpha"].live() == []
