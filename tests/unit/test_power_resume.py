"""The resume flow's decisions, with memory clouds and a recording Slurm."""

from __future__ import annotations

import itertools

import structlog

from elastic.cloud import ACTIVE, BUILDING, ERROR
from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.errors import CloudError, CloudErrorKind
from elastic.power.resume import resume
from elastic.served import Served

from tests.support.power import held_by_another_run, make_services, released_at_the_first_pause

CONFIG_ONE_CLOUD = """\
cluster: test
clouds:
  alpha: {clouds_yaml: clouds.yaml}
pools:
  cpu:
    nodes: cpu-[001-004]
    slurm: {cpus: 1, real_memory: 1000}
    boot: {flavor: m1.small, image: debian-12}
    clouds:
      - {cloud: alpha, network: private}
"""

OURS = {META_CLUSTER: "test", META_POOL: "cpu"}


def _meta(node: str) -> dict[str, str]:
    return {**OURS, META_NODE: node}


def test_a_create_logs_its_duration_on_the_services_monotonic_clock(tmp_path):
    """The seconds a create took come from Services.monotonic, not from the process's clock."""
    svc, _, _, _ = make_services(tmp_path)
    captured = structlog.testing.CapturingLogger()
    svc.log = structlog.wrap_logger(captured, processors=[])
    svc.monotonic = itertools.count(start=100.0, step=3.0).__next__
    assert resume(["cpu-001"], svc).exit_code == 0
    creates = [c.kwargs for c in captured.calls if c.kwargs["event"] == "cloud.create"]
    assert [(e["node"], e["seconds"]) for e in creates] == [("cpu-001", 3.0)]


def test_boots_one_server_per_node_and_sends_addresses_in_one_call(tmp_path):
    """Each node gets one server on the pool's first cloud; Slurm gets all addresses in one update."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert outcome.exit_code == 0 and not outcome.failed
    assert sorted(s.name for s in clouds["alpha"].live()) == ["cpu-001", "cpu-002"]
    assert clouds["beta"].live() == []
    assert len(slurm.addresses) == 1 and set(slurm.addresses[0]) == {"cpu-001", "cpu-002"}
    assert all(a.startswith("127.10.0.") for a in slurm.addresses[0].values())


def test_server_metadata_names_cluster_node_and_pool(tmp_path):
    """A created server carries our cluster, node and pool in metadata, and the node as its name."""
    svc, clouds, _, _ = make_services(tmp_path)
    resume(["cpu-003"], svc)
    (server,) = clouds["alpha"].live()
    assert server.name == "cpu-003"
    assert server.metadata == {META_CLUSTER: "test", META_NODE: "cpu-003", META_POOL: "cpu"}


def test_adopts_active_server_instead_of_creating(tmp_path):
    """An ACTIVE server of ours for the node is adopted: no create call is made."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["beta"].add("cpu-001", status=ACTIVE, metadata=_meta("cpu-001"))
    outcome = resume(["cpu-001"], svc)
    assert outcome.served and not any(op == "create" for op, _ in clouds["alpha"].calls + clouds["beta"].calls)
    assert list(slurm.addresses[0]) == ["cpu-001"]


def test_adopts_building_server_and_waits_for_it(tmp_path):
    """A BUILD server of ours is adopted and waited for, not duplicated."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].add("cpu-001", status=BUILDING, metadata=_meta("cpu-001"))
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"}
    assert [s.name for s in clouds["alpha"].live()] == ["cpu-001"]


def test_replaces_error_server(tmp_path):
    """An ERROR server of ours is deleted and a new one created."""
    svc, clouds, _, _ = make_services(tmp_path)
    old = clouds["alpha"].add("cpu-001", status=ERROR, metadata=_meta("cpu-001"))
    resume(["cpu-001"], svc)
    assert ("delete", old.id) in clouds["alpha"].calls
    (server,) = clouds["alpha"].live()
    assert server.id != old.id and server.status == ACTIVE


def test_ignores_a_server_of_another_cluster_with_the_same_name(tmp_path):
    """A same-named server without our cluster's metadata is neither adopted nor deleted."""
    svc, clouds, _, _ = make_services(tmp_path)
    stranger = clouds["alpha"].add("cpu-001", status=ACTIVE, metadata={META_CLUSTER: "other"})
    resume(["cpu-001"], svc)
    assert ("delete", stranger.id) not in clouds["alpha"].calls
    assert sum(1 for s in clouds["alpha"].live() if s.name == "cpu-001") == 2


def test_duplicates_keep_newest_active_and_delete_the_rest(tmp_path):
    """Two live servers for one node: the newest ACTIVE one is kept, the other deleted."""
    svc, clouds, _, _ = make_services(tmp_path)
    older = clouds["alpha"].add("cpu-001", status=ACTIVE, metadata=_meta("cpu-001"), created=1.0)
    newer = clouds["beta"].add("cpu-001", status=ACTIVE, metadata=_meta("cpu-001"), created=2.0)
    resume(["cpu-001"], svc)
    assert ("delete", older.id) in clouds["alpha"].calls
    assert ("delete", newer.id) not in clouds["beta"].calls


def test_quota_on_first_cloud_falls_back_to_second(tmp_path):
    """A quota failure on the pool's first cloud boots the node on its second cloud."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 1
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc)
    assert outcome.exit_code == 0
    assert len(clouds["alpha"].live()) == 1 and len(clouds["beta"].live()) == 2
    assert set(slurm.addresses[0]) == {"cpu-001", "cpu-002", "cpu-003"}


def test_cloud_in_cooldown_is_tried_last(tmp_path):
    """After a quota failure, the next resume starts on the pool's next cloud (cool-down)."""
    svc, clouds, _, clock = make_services(tmp_path)
    clouds["alpha"].instance_quota = 0
    resume(["cpu-001"], svc)
    clouds["alpha"].instance_quota = 100
    clouds["alpha"].calls.clear()
    clock.now += 10
    resume(["cpu-002"], svc)
    assert not any(op == "create" for op, _ in clouds["alpha"].calls)
    assert {s.name for s in clouds["beta"].live()} == {"cpu-001", "cpu-002"}


def test_cooldown_expires(tmp_path):
    """Once the cool-down has passed, the pool's first cloud is tried first again."""
    svc, clouds, _, clock = make_services(tmp_path)
    clouds["alpha"].instance_quota = 0
    resume(["cpu-001"], svc)
    clouds["alpha"].instance_quota = 100
    clock.now += 301
    resume(["cpu-002"], svc)
    assert [s.name for s in clouds["alpha"].live()] == ["cpu-002"]


def test_error_with_no_valid_host_falls_back(tmp_path):
    """A server that goes ERROR (No valid host) is deleted and the node boots on the next cloud."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].error_on_boot["cpu-001"] = "No valid host was found. There are not enough hosts available."
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"}
    assert clouds["alpha"].live() == [] and [s.name for s in clouds["beta"].live()] == ["cpu-001"]


def _spy_addresses(svc, slurm) -> list[tuple[float, dict[str, str]]]:
    """Each address update with the flow's clock time when it was sent."""
    sent: list[tuple[float, dict[str, str]]] = []
    record = slurm.update_addresses

    def update_addresses(addrs, hostnames=None):
        sent.append((svc.clock(), dict(addrs)))
        record(addrs, hostnames)

    slurm.update_addresses = update_addresses
    return sent


def test_address_reaches_slurm_while_a_slower_server_still_builds(tmp_path):
    """A server stuck in BUILD does not hold back the address of one that is ACTIVE: a VM's slurmd
    may register long before the slow one's boot deadline."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    clouds["alpha"].stuck_in_build.add("cpu-002")
    sent = _spy_addresses(svc, slurm)
    start = clock.now

    outcome = resume(["cpu-001", "cpu-002"], svc)

    assert outcome.served.keys() == {"cpu-001"} and outcome.failed["cpu-002"].kind == "timeout"
    [(when, addresses)] = sent
    assert list(addresses) == ["cpu-001"] and when - start <= svc.config.timeouts.poll


def test_addresses_found_in_one_poll_go_in_one_call_before_a_fallback_round(tmp_path):
    """Nodes ACTIVE in the first round reach Slurm in one call, before the node that went ERROR
    is booted again on the next cloud; that one follows in its own call."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].error_on_boot["cpu-003"] = "No valid host was found. There are not enough hosts available."
    events: list[tuple[str, list[str]]] = []
    update_addresses, create_on_beta = slurm.update_addresses, clouds["beta"].create_server
    slurm.update_addresses = lambda addrs, hostnames=None: (events.append(("addresses", sorted(addrs))),
                                                            update_addresses(addrs, hostnames))
    clouds["beta"].create_server = lambda request: (events.append(("create on beta", [request.name])),
                                                    create_on_beta(request))[1]

    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc)

    assert outcome.exit_code == 0
    assert events == [("addresses", ["cpu-001", "cpu-002"]), ("create on beta", ["cpu-003"]),
                      ("addresses", ["cpu-003"])]


def test_every_cloud_full_fails_node_with_power_down_force(tmp_path):
    """When every cloud is out of quota, the node gets power_down_force and a quota reason."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 0
    clouds["beta"].instance_quota = 0
    outcome = resume(["cpu-001"], svc)
    assert outcome.exit_code == 1
    state, reason = slurm.state_of("cpu-001")
    assert state == "power_down_force" and reason.startswith("elastic: quota:")


def test_missing_image_on_the_first_cloud_falls_back_and_is_remembered(tmp_path):
    """An image missing on the pool's first cloud is that cloud's problem: the node boots on the
    next cloud, and the problem is recorded for status and check."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].images.clear()
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"} and slurm.states == []
    assert [s.name for s in clouds["beta"].live()] == ["cpu-001"]
    assert svc.history.problems()["alpha"]["cpu"]["kind"] == "not-found"


def test_missing_image_on_every_cloud_sets_node_down(tmp_path):
    """When no cloud of the pool can serve (image missing on each), the node goes DOWN with a
    reason naming the last cloud's error and the other cloud's kind."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].images.clear()
    clouds["beta"].images.clear()
    outcome = resume(["cpu-001"], svc)
    reason = outcome.failed["cpu-001"].reason
    assert slurm.states == [(("cpu-001",), "power_down_force", reason), (("cpu-001",), "down", reason)]
    assert reason.startswith("elastic: not-found: beta: image") and "not-found on alpha" in reason
    assert not any(op == "create" for op, _ in clouds["alpha"].calls + clouds["beta"].calls)


def test_permanent_on_one_cloud_and_quota_on_the_other_is_not_down(tmp_path):
    """A node that one cloud refuses permanently and the other for quota is not DOWN: the job is
    requeued (power_down_force) and the node may be tried again later."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].images.clear()
    clouds["beta"].instance_quota = 0
    outcome = resume(["cpu-001"], svc)
    assert not outcome.failed["cpu-001"].permanent
    assert [state for _, state, _ in slurm.states] == ["power_down_force"]


def test_rate_limit_is_retried_after_looking_for_the_server(tmp_path):
    """A 429 on create is retried after a pause, and before resending the create we list by name."""
    svc, clouds, _, clock = make_services(tmp_path)
    clouds["alpha"].fail_next("create", CloudErrorKind.RATE_LIMITED, times=2)
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"}
    ops = [op for op, _ in clouds["alpha"].calls]
    assert ops.count("create") == 3
    assert 1.0 <= clock.slept[0] <= 1.5 and 2.0 <= clock.slept[1] <= 3.0  # backoff with jitter
    first_create = ops.index("create")
    assert "list" in ops[first_create + 1:first_create + 3]


def test_transient_outage_on_first_cloud_falls_back(tmp_path):
    """When the first cloud stays unreachable through the retries, the node boots on the second."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].fail_next("resolve", CloudErrorKind.TRANSIENT, times=10)
    outcome = resume(["cpu-001"], svc)
    assert [s.name for s in clouds["beta"].live()] == ["cpu-001"] and outcome.exit_code == 0


def test_max_nodes_caps_a_pool_on_a_cloud(tmp_path):
    """max_nodes limits how many of a pool's servers run on one cloud; the rest fail with a limit reason."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    outcome = resume(["gpu-1", "gpu-2"], svc)
    assert len(clouds["beta"].live()) == 1
    (failed,) = outcome.failed
    assert slurm.state_of(failed)[0] == "power_down_force" and "max_nodes" in slurm.state_of(failed)[1]


def test_max_nodes_counts_servers_of_earlier_resumes(tmp_path):
    """A pool's servers from an earlier resume count against max_nodes on that cloud."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    assert resume(["gpu-1"], svc).exit_code == 0
    outcome = resume(["gpu-2"], svc)
    assert [s.name for s in clouds["beta"].live()] == ["gpu-1"]
    assert outcome.failed["gpu-2"].kind == "limit"


def test_node_in_no_pool_is_set_down(tmp_path):
    """A node of no pool is not booted and goes DOWN with a reason naming the config."""
    svc, _, slurm, _ = make_services(tmp_path)
    outcome = resume(["cpu-001", "mystery-7"], svc)
    assert "cpu-001" in outcome.served
    state, reason = slurm.state_of("mystery-7")
    assert state == "down" and "not in any pool" in reason


def test_boot_timeout_deletes_server_and_fails_node(tmp_path):
    """A server still BUILD at the boot deadline is deleted and its node gets a timeout reason."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].boot_polls = 10**6
    outcome = resume(["cpu-001"], svc)
    assert outcome.failed["cpu-001"].kind == "timeout"
    assert clouds["alpha"].live() == []
    assert slurm.state_of("cpu-001")[0] == "power_down_force"


def test_server_deleted_while_booting_counts_as_cancelled(tmp_path):
    """If a suspend deletes the server while resume waits, the node is cancelled, not failed."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].boot_polls = 3
    original_sleep = svc.sleep

    def sleep_and_delete(seconds):
        for server in clouds["alpha"].live():
            clouds["alpha"].delete_server(server.id)
        original_sleep(seconds)

    svc.sleep = sleep_and_delete
    outcome = resume(["cpu-001"], svc)
    assert outcome.cancelled == {"cpu-001"} and not outcome.failed and slurm.states == []


def test_unexpected_exception_fails_closed(tmp_path):
    """An unexpected exception leaves every unserved node power_down_force with an internal reason."""
    svc, clouds, slurm, _ = make_services(tmp_path)

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    clouds["alpha"].resolve_boot = explode
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert set(outcome.failed) == {"cpu-001", "cpu-002"}
    state, reason = slurm.state_of("cpu-001")
    assert state == "power_down_force" and reason.startswith("elastic: internal: RuntimeError")


def test_failing_scontrol_does_not_raise(tmp_path):
    """If scontrol fails while reporting, resume still returns its outcome."""
    svc, _, slurm, _ = make_services(tmp_path)
    slurm.fail = True
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"}


# ---- one cloud's trouble stays on that cloud -------------------------------------------------


def test_a_cloud_that_cannot_be_listed_gets_no_create_and_its_nodes_boot_on_the_next(tmp_path):
    """With alpha unlistable, cpu nodes (pool alpha, beta) boot on beta and none is created on
    alpha (a server may hide there); gpu nodes (beta only) boot as usual."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].fail_next("list", CloudErrorKind.UNREACHABLE, times=2)
    outcome = resume(["cpu-001", "cpu-002", "gpu-1"], svc)
    assert outcome.exit_code == 0 and set(outcome.served) == {"cpu-001", "cpu-002", "gpu-1"}
    assert not any(op == "create" for op, _ in clouds["alpha"].calls)
    assert sorted(s.name for s in clouds["beta"].live()) == ["cpu-001", "cpu-002", "gpu-1"]


def test_a_create_without_an_answer_falls_back_and_leaves_a_pending_delete(tmp_path):
    """A create that got no reply may have made a server: the node boots on beta, and alpha gets
    a pending delete for it, so a later run deletes whatever the lost create made."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].fail_next("create", CloudErrorKind.UNREACHABLE, final=True)
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"} and [s.name for s in clouds["beta"].live()] == ["cpu-001"]
    assert list(svc.history.pending_deletes()["cpu-001"]) == ["alpha"]


def test_a_server_with_a_pending_delete_is_deleted_not_adopted(tmp_path):
    """A server a suspend could not delete is not adopted (its slurmd predates the resume): it is
    deleted, the pending delete is settled, and the node gets a fresh server."""
    svc, clouds, _, clock = make_services(tmp_path)
    old = clouds["alpha"].add("cpu-001", metadata=_meta("cpu-001"), status=ACTIVE)
    svc.history.add_pending_deletes({"cpu-001": {"alpha": "suspend: cannot list"}}, clock())
    outcome = resume(["cpu-001"], svc)
    assert outcome.served.keys() == {"cpu-001"} and ("delete", old.id) in clouds["alpha"].calls
    (new,) = clouds["alpha"].live()
    assert new.id != old.id and svc.history.pending_deletes() == {}


def test_a_cloud_lost_while_booting_sends_its_nodes_to_the_next_cloud(tmp_path):
    """When alpha stops answering (401) while servers boot there, those nodes boot on beta, a
    pending delete remembers the servers on alpha, and beta's own nodes are not disturbed."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].boot_polls = 3
    original = clouds["alpha"].list_servers
    lists = []

    def list_then_refuse(cluster, names=None):
        lists.append(names)
        if len(lists) == 2:  # the first poll after the creates
            raise CloudError(CloudErrorKind.AUTH, "authentication failed", cloud="alpha", status=401)
        return original(cluster, names)

    clouds["alpha"].list_servers = list_then_refuse
    outcome = resume(["cpu-001", "cpu-002", "gpu-1"], svc)
    assert set(outcome.served) == {"cpu-001", "cpu-002", "gpu-1"} and outcome.failed == {}
    assert sorted(s.name for s in clouds["beta"].live()) == ["cpu-001", "cpu-002", "gpu-1"]
    assert set(svc.history.pending_deletes()) == {"cpu-001", "cpu-002"}


def test_no_create_starts_after_the_boot_deadline_and_the_reason_keeps_the_cause(tmp_path):
    """Under a 429 storm longer than timeouts.boot, retries stop at the deadline, no create is
    sent after it, and the node's reason says rate-limited, not timeout."""
    svc, clouds, slurm, clock = make_services(tmp_path, extra="timeouts: {boot: 20, delete: 30, poll: 5}\n",
                                              config_text=CONFIG_ONE_CLOUD)
    clouds["alpha"].fail_next("create", CloudErrorKind.RATE_LIMITED, times=100)
    start = clock()
    outcome = resume(["cpu-001"], svc)
    creates = [op for op, _ in clouds["alpha"].calls if op == "create"]
    assert outcome.failed["cpu-001"].kind == "rate-limited" and clock() - start <= 20
    assert 1 <= len(creates) < 8


def test_a_problem_is_forgotten_once_the_cloud_serves_the_pool_again(tmp_path):
    """A problem older than the cloud's cooldown no longer puts the cloud last, and is cleared when
    a server boots there."""
    svc, clouds, _, clock = make_services(tmp_path)
    svc.history.record_problem("alpha", "cpu", "not-found", "image 'debian-12' not found", clock() - 301)
    resume(["cpu-001"], svc)
    assert [s.name for s in clouds["alpha"].live()] == ["cpu-001"]
    assert svc.history.problems() == {}


def test_a_failed_look_before_resending_a_create_stops_the_retries(tmp_path):
    """After a create answered 5xx, the list that looks for a server it may have made fails: the
    create is not resent blind (no duplicate); the node boots on beta and alpha gets a pending delete."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].fail_next("create", CloudErrorKind.TRANSIENT)
    original = clouds["alpha"].list_servers
    looks = []

    def look_fails_after_the_create(cluster, names=None):
        if any(op == "create" for op, _ in clouds["alpha"].calls):
            looks.append(names)
            raise CloudError(CloudErrorKind.TRANSIENT, "list servers: 503", cloud="alpha", status=503)
        return original(cluster, names)

    clouds["alpha"].list_servers = look_fails_after_the_create
    outcome = resume(["cpu-001"], svc)
    assert [op for op, _ in clouds["alpha"].calls].count("create") == 1 and looks
    assert outcome.served.keys() == {"cpu-001"} and [s.name for s in clouds["beta"].live()] == ["cpu-001"]
    assert list(svc.history.pending_deletes()["cpu-001"]) == ["alpha"]


class _Boots:
    """BootTimes that expects `expected` seconds and keeps what a run records."""

    def __init__(self, expected: float | None):
        self._expected = expected
        self.recorded: dict[str, list[float]] = {}

    def expected(self, cloud: str) -> float | None:
        return self._expected

    def record(self, cloud: str, seen: list[float]) -> None:
        self.recorded[cloud] = list(seen)


ADAPTIVE_POLL = CONFIG_ONE_CLOUD + "timeouts: {boot: 600, delete: 30}\n"


def _adaptive(tmp_path, expected: float | None, boot_polls: int):
    svc, clouds, _, clock = make_services(tmp_path, config_text=ADAPTIVE_POLL)
    clouds["alpha"].boot_polls = boot_polls
    # The memory cloud stamps creates from its own counter: start it at the fake clock's now.
    clouds["alpha"]._ids = itertools.count(int(clock.now))
    svc.boots = _Boots(expected)
    return svc, clock


def test_without_a_learned_boot_time_polls_are_about_a_second_apart(tmp_path):
    """timeouts.poll unset and nothing learned: every pause is at most a second."""
    svc, clock = _adaptive(tmp_path, None, boot_polls=4)
    assert resume(["cpu-001", "cpu-002"], svc).exit_code == 0
    assert clock.slept and max(clock.slept) <= 1.0


def test_polls_are_sparse_until_the_learned_boot_time(tmp_path):
    """Expected boot 60 s: the first pauses are EARLY_POLL_MAX long, none longer, and the run
    records what it saw for the next runs."""
    from elastic.pacing import EARLY_POLL_MAX

    svc, clock = _adaptive(tmp_path, 60.0, boot_polls=20)
    assert resume(["cpu-001", "cpu-002"], svc).exit_code == 0
    assert clock.slept[0] == EARLY_POLL_MAX and max(clock.slept) <= EARLY_POLL_MAX
    assert clock.slept[-1] == 1.0, "near the due time polls come every second"
    seen = svc.boots.recorded["alpha"]
    assert len(seen) == 2 and all(s > 0 for s in seen)


def _suspend_first(svc, clock, nodes, *, later_by: float):
    """svc.locks for a resume whose nodes' locks a suspend of `nodes` holds: on the resume's first
    take, the suspend (started `later_by` seconds after the resume) runs to its end, then the
    resume gets the locks."""
    from contextlib import contextmanager, nullcontext
    from dataclasses import replace

    from elastic.power.suspend import suspend

    suspender = replace(svc, locks=lambda names: nullcontext(frozenset(names)))
    started = clock()
    ran: list[bool] = []

    @contextmanager
    def locks(names):
        if not ran:
            ran.append(True)
            resumed_at = clock.now
            clock.now = started + later_by
            suspend(nodes, suspender)
            clock.now = max(clock.now, resumed_at) + 1
        yield frozenset(names)

    return locks


def test_a_suspend_that_took_the_lock_first_cancels_the_waiting_resume(tmp_path):
    """power_down_force while a resume waits for the node's lock: the suspend runs first, and the
    resume then boots nothing for the node (Slurm counts it powered down), cancelled, not failed."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    svc.locks = _suspend_first(svc, clock, ["cpu-001"], later_by=2)
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert outcome.cancelled == {"cpu-001"} and "cpu-001" not in outcome.served and not outcome.failed
    assert [s.name for s in clouds["alpha"].live() + clouds["beta"].live()] == ["cpu-002"]
    assert "cpu-002" in outcome.served and slurm.states == []


def test_a_suspend_that_started_before_the_resume_does_not_stop_it(tmp_path):
    """A power-up after a suspend (the suspend still deleting when the resume starts) boots the node."""
    svc, clouds, _, clock = make_services(tmp_path)
    svc.locks = _suspend_first(svc, clock, ["cpu-001"], later_by=-5)
    outcome = resume(["cpu-001"], svc)
    assert "cpu-001" in outcome.served and not outcome.cancelled
    assert [s.name for s in clouds["alpha"].live()] == ["cpu-001"]


# ---- nodes whose locks another run holds ---------------------------------------------------------


def test_a_node_another_run_holds_does_not_hold_up_the_others(tmp_path):
    """cpu-002's lock is held by another run for two takes: cpu-001 boots and is served at once;
    cpu-002 is placed once the lock is free, in the same run, and served too."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    svc.locks, takes = held_by_another_run({"cpu-002"}, for_takes=2)
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert set(outcome.served) == {"cpu-001", "cpu-002"} and not outcome.failed
    assert list(slurm.addresses[0]) == ["cpu-001"] and list(slurm.addresses[-1]) == ["cpu-002"]
    assert len(takes) == 3 and len(clouds["alpha"].live()) == 2


def test_a_node_whose_lock_stays_held_fails_at_the_boot_deadline_as_a_timeout(tmp_path):
    """A lock held past timeouts.boot: the node is not served, with a timeout reason naming the
    lock (not a local fault), and nothing is created for it; the others are served."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    svc.locks, _ = held_by_another_run({"cpu-002"}, for_takes=10**6)
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert set(outcome.served) == {"cpu-001"}
    failure = outcome.failed["cpu-002"]
    assert failure.kind == "timeout" and "node lock held by another elastic run" in failure.message
    assert [s.name for s in clouds["alpha"].live() + clouds["beta"].live()] == ["cpu-001"]
    assert slurm.states == [(("cpu-002",), "power_down_force", failure.reason)]
    assert clock.now - 1_000_000.0 >= svc.config.timeouts.boot


def test_a_suspend_that_could_not_lock_a_booting_node_still_cancels_it(tmp_path):
    """power_down_force of a node this resume is booting, whose suspend gave up on the lock: the
    resume sees the release as it polls, deletes the server itself, and cancels the node."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    clouds["alpha"].boot_polls = 3
    released_at_the_first_pause(svc, clock)
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert outcome.cancelled == {"cpu-001"} and set(outcome.served) == {"cpu-002"} and not outcome.failed
    assert [s.name for s in clouds["alpha"].live()] == ["cpu-002"]
    assert all("cpu-001" not in sent for sent in slurm.addresses) and slurm.states == []


def test_a_release_recorded_while_a_round_looks_cancels_the_node_and_keeps_its_deletes(tmp_path):
    """A suspend of cpu-001 writes its release and deletes (before any lock) while this resume lists
    the clouds, past its release check: nothing is created for cpu-001, which is cancelled, and the
    suspend's deletes stay pending for it (or for whoever comes next); cpu-002 boots as usual."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    original = clouds["alpha"].list_servers

    def released_during_the_first_list(cluster, names=None):
        if not svc.history.releases():
            clock.now += 1
            svc.history.record_releases(["cpu-001"], clock(), {"cpu-001": {"alpha": "suspend: under way",
                                                                            "beta": "suspend: under way"}})
        return original(cluster, names)

    clouds["alpha"].list_servers = released_during_the_first_list
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert outcome.cancelled == {"cpu-001"} and set(outcome.served) == {"cpu-002"} and not outcome.failed
    assert ("create", "cpu-001") not in clouds["alpha"].calls + clouds["beta"].calls
    assert set(svc.history.pending_deletes()["cpu-001"]) == {"alpha", "beta"} and slurm.states == []


def test_a_crash_after_a_node_was_cancelled_fails_only_the_nodes_still_booting(tmp_path):
    """Our own bug strikes after a suspend took cpu-001 back: cpu-002 fails closed as internal,
    while cpu-001 stays as the suspend left it (powered down), with no Slurm state change."""
    svc, clouds, slurm, clock = make_services(tmp_path)
    clouds["alpha"].boot_polls = 5

    def crash_once_deleted() -> None:
        if "delete" in {op for op, _ in clouds["alpha"].calls}:
            raise RuntimeError("a bug of ours")

    released_at_the_first_pause(svc, clock, then=crash_once_deleted)
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert outcome.cancelled == {"cpu-001"} and set(outcome.failed) == {"cpu-002"}
    assert outcome.failed["cpu-002"].kind == "internal"
    assert [names for names, _, _ in slurm.states] == [("cpu-002",)]


# ---- ids an earlier run looked up (state_dir/lookups.json) -----------------------------------


def test_a_cached_id_the_cloud_refuses_is_looked_up_again_once(tmp_path):
    """The image id an earlier run looked up is gone (replaced under its name): the creates it
    fails are sent again with a fresh look-up, made once for all of them; every node boots there."""
    svc, clouds, slurm, _ = make_services(tmp_path, config_text=CONFIG_ONE_CLOUD)
    clouds["alpha"].stale_ids = {"image": "old-image-id"}
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc)
    assert outcome.exit_code == 0 and sorted(outcome.served) == ["cpu-001", "cpu-002", "cpu-003"]
    resolves = [arg for op, arg in clouds["alpha"].calls if op == "resolve"]
    assert resolves == ["m1.small/debian-12/private", "m1.small/debian-12/private fresh"]
    assert sorted(s.name for s in clouds["alpha"].live()) == ["cpu-001", "cpu-002", "cpu-003"]


def test_an_id_this_run_looked_up_itself_is_not_looked_up_again(tmp_path):
    """Refused though the run just looked it up: the cloud's answer stands (a config error on that
    cloud), with no second look-up and no second create."""
    svc, clouds, slurm, _ = make_services(tmp_path, config_text=CONFIG_ONE_CLOUD)
    clouds["alpha"].fail_next("create", CloudErrorKind.CONFIG, message="Can not find requested image")
    original = clouds["alpha"].create_server

    def refused_with_resource(request):
        try:
            return original(request)
        except CloudError as error:
            error.resource = ("image", request.image_id)
            raise

    clouds["alpha"].create_server = refused_with_resource
    outcome = resume(["cpu-001"], svc)
    assert outcome.failed["cpu-001"].kind == "config"
    assert [arg for op, arg in clouds["alpha"].calls if op == "resolve"] == ["m1.small/debian-12/private"]
    assert [op for op, _ in clouds["alpha"].calls].count("create") == 1


# ---- the first poll ---------------------------------------------------------------------------


def test_with_a_learned_boot_time_the_first_poll_waits(tmp_path):
    """Boot time 60 s learned: fresh creates are first listed after an early-poll pause, not at once."""
    from elastic.pacing import EARLY_POLL_MAX

    svc, clock = _adaptive(tmp_path, 60.0, boot_polls=1)
    cloud = svc.clouds["alpha"]
    listed_at: list[float] = []
    original = cloud.list_servers

    def list_servers(cluster, names=None):
        listed_at.append(clock.now)
        return original(cluster, names)

    cloud.list_servers = list_servers
    started = clock.now
    assert resume(["cpu-001"], svc).exit_code == 0
    assert listed_at == [started, started + EARLY_POLL_MAX]  # the look before creating, then one poll


def test_without_a_learned_boot_time_or_with_an_adopted_server_the_first_poll_is_at_once(tmp_path):
    """Nothing learned: list right after the creates. An adopted server may be ACTIVE: no pause either."""
    for expected, adopt in ((None, False), (60.0, True)):
        svc, clock = _adaptive(tmp_path, expected, boot_polls=1)
        if adopt:
            svc.clouds["alpha"].add("cpu-001", status=BUILDING, metadata=_meta("cpu-001"))
        assert resume(["cpu-001"], svc).exit_code == 0
        assert clock.slept == []


def test_resume_notes_the_server_of_each_node_it_served_and_no_other(tmp_path):
    """The servers of the served nodes (adopted or created) go to the history for their suspend; a
    node that failed on every cloud leaves nothing."""
    svc, clouds, _, _ = make_services(tmp_path)
    adopted = clouds["beta"].add("cpu-002", metadata=_meta("cpu-002"))
    for name in ("alpha", "beta"):
        clouds[name].fail_next("create", CloudErrorKind.QUOTA, times=100)
    clouds["beta"].calls.clear()
    outcome = resume(["cpu-001", "cpu-002"], svc)
    assert set(outcome.served) == {"cpu-002"} and set(outcome.failed) == {"cpu-001"}
    assert svc.served.take("test", ["cpu-001", "cpu-002"]) == {"cpu-002": Served("beta", adopted.id, "cpu")}
