"""Job-aware resume: a job's nodes together on one cloud, sized against quota, all_or_nothing,
server groups (memory clouds, a recording Slurm)."""

from __future__ import annotations

from elastic.cloud import ACTIVE
from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.errors import CloudErrorKind
from elastic.power.resume import resume
from elastic.power.suspend import suspend
from elastic.resume_request import ResumeJob

from tests.support.power import CONFIG, make_services, released_at_the_first_pause

CPU_POOL = "    nodes: cpu-[001-004]\n"


def _config(*lines: str) -> str:
    """The fixtures' config with pool options added to the cpu pool."""
    return CONFIG.replace(CPU_POOL, CPU_POOL + "".join(f"    {line}\n" for line in lines))


def _creates(cloud) -> list[str]:
    return [name for op, name in cloud.calls if op == "create"]


JOB = [ResumeJob(7, ("cpu-001", "cpu-002", "cpu-003"))]


def test_a_job_that_does_not_fit_the_first_cloud_lands_whole_on_the_second(tmp_path):
    """alpha's quota leaves room for 2: the 3-node job goes to beta whole, with no create on alpha."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 2
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert outcome.exit_code == 0
    assert _creates(clouds["alpha"]) == [] and sorted(s.name for s in clouds["beta"].live()) == [
        "cpu-001", "cpu-002", "cpu-003"]
    assert [op for op, _ in clouds["alpha"].calls].count("limits") == 1


def test_without_jobs_the_same_nodes_split_as_before(tmp_path):
    """Nodes of no job are singletons: two fit alpha's quota, the third goes to beta."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 2
    assert resume(["cpu-001", "cpu-002", "cpu-003"], svc).exit_code == 0
    assert len(clouds["alpha"].live()) == 2 and len(clouds["beta"].live()) == 1


def test_spread_keeps_per_node_fallback(tmp_path):
    """placement: spread: the job's nodes fill alpha and the rest fall back node by node."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("placement: spread"))
    clouds["alpha"].instance_quota = 2
    assert resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB).exit_code == 0
    assert len(clouds["alpha"].live()) == 2 and len(clouds["beta"].live()) == 1
    assert not any(op == "limits" for op, _ in clouds["alpha"].calls)


def test_two_jobs_share_the_clouds_without_splitting(tmp_path):
    """A 3-node and a 1-node job with room for 3 on alpha: the large one takes alpha, the small one beta."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 3
    jobs = [ResumeJob(1, ("cpu-001",)), ResumeJob(2, ("cpu-002", "cpu-003", "cpu-004"))]
    assert resume(["cpu-001", "cpu-002", "cpu-003", "cpu-004"], svc, jobs=jobs).exit_code == 0
    assert sorted(s.name for s in clouds["alpha"].live()) == ["cpu-002", "cpu-003", "cpu-004"]
    assert [s.name for s in clouds["beta"].live()] == ["cpu-001"]


def test_a_job_that_fits_nowhere_fails_at_once_naming_each_clouds_quota(tmp_path):
    """No create at all: every node of the job is requeued with a reason naming both clouds' room."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 2
    clouds["beta"].instance_quota = 1
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert _creates(clouds["alpha"]) == [] and _creates(clouds["beta"]) == []
    state, reason = slurm.state_of("cpu-002")
    assert state == "power_down_force"
    assert reason == ("elastic: quota: job 7 needs 3 nodes; alpha: room for 2 (instances 0 of 2 used); "
                      "beta: room for 1 (instances 0 of 1 used)")
    assert set(outcome.failed) == {"cpu-001", "cpu-002", "cpu-003"}


def test_a_quota_refusal_the_read_did_not_foresee_moves_the_whole_job(tmp_path):
    """The read said room, a create got 403: the job's other servers on alpha are deleted and all go to beta."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].fail_next("create", CloudErrorKind.QUOTA)
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert outcome.exit_code == 0
    assert clouds["alpha"].live() == [] and len(clouds["beta"].live()) == 3
    assert sum(1 for op, _ in clouds["alpha"].calls if op == "delete") == 2


def test_a_server_in_error_takes_its_job_to_the_next_cloud(tmp_path):
    """No valid host for one node on alpha: its job's servers there are deleted and the job boots on beta."""
    svc, clouds, slurm, _ = make_services(tmp_path)
    clouds["alpha"].error_on_boot["cpu-002"] = "No valid host was found. There are not enough hosts available."
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert outcome.exit_code == 0 and set(outcome.served) == {"cpu-001", "cpu-002", "cpu-003"}
    assert clouds["alpha"].live() == [] and len(clouds["beta"].live()) == 3
    beta_addresses = {s.name: s.fixed_address() for s in clouds["beta"].live()}
    last = {}
    for batch in slurm.addresses:
        last.update(batch)
    assert last == beta_addresses  # Slurm ends with the addresses of the servers on beta


def test_a_jobs_nodes_join_the_cloud_its_other_nodes_run_on(tmp_path):
    """nodes_alloc: the job's node already running on beta draws the nodes resumed now to beta."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["beta"].add("cpu-004", status=ACTIVE,
                       metadata={META_CLUSTER: "test", META_POOL: "cpu", META_NODE: "cpu-004"})
    jobs = [ResumeJob(9, ("cpu-001", "cpu-002"), nodes_alloc=("cpu-001", "cpu-002", "cpu-004"))]
    assert resume(["cpu-001", "cpu-002"], svc, jobs=jobs).exit_code == 0
    assert _creates(clouds["alpha"]) == []
    assert sorted(s.name for s in clouds["beta"].live()) == ["cpu-001", "cpu-002", "cpu-004"]


def test_all_or_nothing_releases_the_rest_of_a_job_that_cannot_be_served(tmp_path):
    """One node cannot boot anywhere: the job's other servers are deleted at once and all its nodes
    are requeued (power_down_force, idle~) with a reason naming the job."""
    svc, clouds, slurm, _ = make_services(tmp_path, config_text=_config("placement: spread", "all_or_nothing: true"))
    for cloud in clouds.values():
        cloud.error_on_boot["cpu-003"] = "Build of instance aborted: image is broken"
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert outcome.served == {}
    assert clouds["alpha"].live() == [] and clouds["beta"].live() == []
    state, reason = slurm.state_of("cpu-001")
    assert state == "power_down_force"
    assert reason.startswith("elastic: job: job 7 (all_or_nothing): released: cpu-003 failed: boot:")
    assert slurm.state_of("cpu-003")[1].startswith("elastic: boot: job 7 (all_or_nothing): ")


def test_all_or_nothing_leaves_a_node_a_suspend_took_back_to_that_suspend(tmp_path):
    """A suspend takes cpu-001 back while it boots (cancelled), then cpu-003 cannot boot: the job's
    other node is released and requeued, and cpu-001 stays as the suspend left it (no state change)."""
    config_text = _config("placement: spread", "all_or_nothing: true")
    svc, clouds, slurm, clock = make_services(tmp_path, config_text=config_text)
    for cloud in clouds.values():
        cloud.error_on_boot["cpu-003"] = "Build of instance aborted: image is broken"
        cloud.boot_polls = 3
    released_at_the_first_pause(svc, clock)
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert outcome.cancelled == {"cpu-001"} and set(outcome.failed) == {"cpu-002", "cpu-003"}
    assert clouds["alpha"].live() == [] and clouds["beta"].live() == []
    assert slurm.state_of("cpu-001") is None
    assert slurm.state_of("cpu-002")[1].startswith("elastic: job: job 7 (all_or_nothing): released: cpu-003")


def test_without_all_or_nothing_the_rest_of_the_job_is_served(tmp_path):
    """The same broken node without all_or_nothing: the other nodes keep their servers."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("placement: spread"))
    for cloud in clouds.values():
        cloud.error_on_boot["cpu-003"] = "Build of instance aborted: image is broken"
    outcome = resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=JOB)
    assert set(outcome.served) == {"cpu-001", "cpu-002"} and set(outcome.failed) == {"cpu-003"}


def test_server_group_per_job_per_cloud_carried_by_the_creates(tmp_path):
    """server_group: one group named for the job on the cloud it boots on, holding its servers;
    a node of no job gets none."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("server_group: soft-affinity"))
    jobs = [ResumeJob(7, ("cpu-001", "cpu-002"))]
    assert resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=jobs).exit_code == 0
    (group,) = clouds["alpha"].server_groups.values()
    assert (group.name, group.policy) == ("test-cpu-job7", "soft-affinity")
    assert sorted(clouds["alpha"].servers[i].name for i in group.members) == ["cpu-001", "cpu-002"]


def test_a_second_resume_of_the_job_reuses_its_group(tmp_path):
    """The group is found by name: a later resume of the same job adds to it instead of making another."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("server_group: affinity"))
    resume(["cpu-001"], svc, jobs=[ResumeJob(7, ("cpu-001",))])
    resume(["cpu-002"], svc, jobs=[ResumeJob(7, ("cpu-002",), nodes_alloc=("cpu-001", "cpu-002"))])
    (group,) = clouds["alpha"].server_groups.values()
    assert len(group.members) == 2


def test_a_server_group_failure_is_that_clouds_fault_only(tmp_path):
    """alpha refuses the group: the job boots on beta, in a group made there."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("server_group: anti-affinity"))
    clouds["alpha"].fail_next("create_server_group", CloudErrorKind.QUOTA, message="Quota exceeded for server_groups")
    assert resume(["cpu-001", "cpu-002"], svc, jobs=[ResumeJob(7, ("cpu-001", "cpu-002"))]).exit_code == 0
    assert clouds["alpha"].live() == [] and len(clouds["beta"].live()) == 2
    (group,) = clouds["beta"].server_groups.values()
    assert len(group.members) == 2


def test_suspend_deletes_a_group_with_its_last_server_only(tmp_path):
    """Suspending part of a job keeps its group; suspending the rest deletes it. An empty group that
    held none of the deleted servers (a resume just made it) is left alone."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("server_group: affinity"))
    resume(["cpu-001", "cpu-002"], svc, jobs=[ResumeJob(7, ("cpu-001", "cpu-002"))])
    fresh = clouds["alpha"].create_server_group("test-cpu-job8", "affinity")
    suspend(["cpu-001"], svc)
    assert sorted(g.name for g in clouds["alpha"].server_groups.values()) == ["test-cpu-job7", "test-cpu-job8"]
    suspend(["cpu-002"], svc)
    assert list(clouds["alpha"].server_groups) == [fresh.id]


def test_suspend_without_server_groups_never_lists_them(tmp_path):
    """Pools without server_group cost suspend no server-group call."""
    svc, clouds, _, _ = make_services(tmp_path)
    resume(["cpu-001"], svc, jobs=[ResumeJob(7, ("cpu-001",))])
    suspend(["cpu-001"], svc)
    assert not any("server_group" in op for op, _ in clouds["alpha"].calls)


def test_a_job_that_moves_off_a_cloud_takes_its_group_there_along(tmp_path):
    """No valid host for one node on alpha: the job boots on beta and its empty group on alpha is deleted."""
    svc, clouds, _, _ = make_services(tmp_path, config_text=_config("server_group: affinity"))
    clouds["alpha"].error_on_boot["cpu-002"] = "No valid host was found. There are not enough hosts available."
    assert resume(["cpu-001", "cpu-002"], svc, jobs=[ResumeJob(7, ("cpu-001", "cpu-002"))]).exit_code == 0
    assert clouds["alpha"].server_groups == {} and ("create_server_group", "test-cpu-job7") in clouds["alpha"].calls
    (group,) = clouds["beta"].server_groups.values()
    assert len(group.members) == 2


def test_jobs_of_one_node_read_no_quota_and_a_refused_one_falls_back(tmp_path):
    """Every job at hand has one node: no limits or flavor read (two requests a run); the node that
    does not fit alpha's quota is refused there (Nova's 403) and boots on beta, as before."""
    svc, clouds, _, _ = make_services(tmp_path)
    clouds["alpha"].instance_quota = 2
    one_node_jobs = [ResumeJob(1, ("cpu-001",)), ResumeJob(2, ("cpu-002",)), ResumeJob(3, ("cpu-003",))]
    assert resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=one_node_jobs).exit_code == 0
    assert not any(op in ("limits", "flavor") for cloud in clouds.values() for op, _ in cloud.calls)
    assert len(_creates(clouds["alpha"])) == 3 and len(clouds["alpha"].live()) == 2
    assert len(clouds["beta"].live()) == 1


def test_a_run_with_a_job_of_two_nodes_reads_quota(tmp_path):
    """One job of two nodes among singletons: the quota is read (once per cloud), as before."""
    svc, clouds, _, _ = make_services(tmp_path)
    jobs = [ResumeJob(1, ("cpu-001", "cpu-002")), ResumeJob(2, ("cpu-003",))]
    assert resume(["cpu-001", "cpu-002", "cpu-003"], svc, jobs=jobs).exit_code == 0
    assert [op for op, _ in clouds["alpha"].calls].count("limits") == 1
