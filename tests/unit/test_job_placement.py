"""Job-aware placement as a pure function: jobs x clouds x headroom x cool-down order -> clouds."""

from __future__ import annotations

from elastic.cloud import Flavor, Limits
from elastic.power.job_placement import (
    Headroom,
    JobNodes,
    anchor_of,
    fits_nowhere,
    group_by_job,
    headroom,
    place_jobs,
    regroup,
)
from elastic.resume_request import ResumeJob

SMALL = Flavor("f1", "m1.small", 2, 4096, 20)


def _job(job_id: int, *nodes: str, others: tuple[str, ...] = ()) -> JobNodes:
    return JobNodes(tuple(nodes), job_id, others)


def test_group_by_job_keeps_argv_order_and_makes_singletons():
    """Nodes of a job are grouped; nodes of no job (manual power_up) are jobs of one node."""
    jobs = [ResumeJob(7, ("c2", "c3")), ResumeJob(8, ("c5",))]
    groups = group_by_job(["c1", "c2", "c3", "c5"], jobs)
    assert [(g.key, g.nodes) for g in groups] == [("node c1", ("c1",)), ("job 7", ("c2", "c3")), ("job 8", ("c5",))]


def test_group_by_job_ignores_nodes_not_in_argv_and_keeps_nodes_alloc_others():
    """argv is authoritative: a job's node that argv does not name is not resumed; nodes_alloc
    minus this call's nodes are the job's others."""
    jobs = [ResumeJob(7, ("c2", "c3", "c9"), nodes_alloc=("c1", "c2", "c3", "c4", "c9"))]
    (group,) = group_by_job(["c2", "c3"], jobs)
    assert group.nodes == ("c2", "c3") and group.others == ("c1", "c4", "c9")


def test_a_node_named_by_two_jobs_belongs_to_the_first():
    """Shared nodes: the first job naming a node owns it; the second job keeps its other nodes."""
    groups = group_by_job(["c1", "c2"], [ResumeJob(1, ("c1",)), ResumeJob(2, ("c1", "c2"))])
    assert [(g.key, g.nodes) for g in groups] == [("job 1", ("c1",)), ("job 2", ("c2",))]


def test_regroup_restricts_jobs_to_the_nodes_left():
    """A partial job (some nodes adopted) is placed with the nodes still to create."""
    job_of = {n: _job(4, "a", "b", "c") for n in ("a", "b", "c")}
    assert regroup(["c", "x", "a"], job_of) == [_job(4, "c", "a"), JobNodes(("x",))]


def test_headroom_is_the_tightest_quota_in_the_pools_flavor():
    """Instances, cores and RAM each bound the count; the tightest one is named."""
    limits = Limits(instances=10, instances_used=2, cores=20, cores_used=14, ram=10**6, ram_used=0)
    assert headroom(limits, SMALL, None) == Headroom(3, "cores 14 of 20 used, 2 per node")
    assert headroom(limits, SMALL, 1) == Headroom(1, "max_nodes leaves 1", "limit")
    assert headroom(limits, SMALL, 0).why == "max_nodes reached"


def test_headroom_unlimited_or_unknown_is_none():
    """Nova's -1 means unlimited; with no read at all the headroom is unknown, not zero."""
    unlimited = Limits(-1, 5, -1, 10, -1, 100)
    assert headroom(unlimited, SMALL, None) == Headroom(None)
    assert headroom(None, None, None) == Headroom(None)
    assert headroom(None, None, 3) == Headroom(3, "max_nodes leaves 3", "limit")


def test_headroom_never_negative():
    """A project over its quota (an admin lowered it) has room for 0, not a negative count."""
    assert headroom(Limits(2, 5, -1, 0, -1, 0), SMALL, None).nodes == 0


def test_a_job_goes_whole_to_the_first_cloud_where_it_fits():
    """A 3-node job skips a cloud with room for 2 and lands whole on the next."""
    decision = place_jobs([_job(1, "a", "b", "c")], ["alpha", "beta"],
                          {"alpha": Headroom(2, "instances 8 of 10 used"), "beta": Headroom(5)})
    assert decision.placed == {"job 1": "beta"} and not decision.unplaceable


def test_largest_job_first_then_smaller_fill_the_rest():
    """Two jobs share two clouds without splitting: the larger is placed first."""
    jobs = [_job(1, "a", "b"), _job(2, "c", "d", "e")]
    decision = place_jobs(jobs, ["alpha", "beta"], {"alpha": Headroom(3), "beta": Headroom(2)})
    assert decision.placed == {"job 2": "alpha", "job 1": "beta"}


def test_ties_go_by_pool_order():
    """When several clouds fit, the pool's first wins; equal-sized jobs keep their order."""
    jobs = [_job(1, "a"), _job(2, "b")]
    decision = place_jobs(jobs, ["beta", "alpha"], {"alpha": Headroom(1), "beta": Headroom(1)})
    assert decision.placed == {"job 1": "beta", "job 2": "alpha"}


def test_cool_down_order_is_the_order_given():
    """The caller puts clouds in cool-down last; a job then lands on the other cloud first."""
    decision = place_jobs([_job(1, "a")], ["beta", "alpha"], {"alpha": Headroom(9), "beta": Headroom(9)})
    assert decision.placed == {"job 1": "beta"}


def test_nodes_alloc_already_on_a_cloud_join_it():
    """A job whose other nodes run on beta joins beta, though alpha comes first in the pool."""
    decision = place_jobs([_job(1, "c")], ["alpha", "beta"], {"alpha": Headroom(9), "beta": Headroom(9)},
                          anchors={"job 1": "beta"})
    assert decision.placed == {"job 1": "beta"}


def test_an_anchor_without_room_falls_back_to_the_pool_order():
    """When the anchor cloud has no room the job's nodes still go together to the next cloud."""
    decision = place_jobs([_job(1, "c", "d")], ["alpha", "beta"], {"alpha": Headroom(9), "beta": Headroom(1)},
                          anchors={"job 1": "beta"})
    assert decision.placed == {"job 1": "alpha"}


def test_headroom_exhausted_job_fits_nowhere_and_names_each_cloud():
    """A job no cloud has room for is unplaceable at once; the reason names every cloud's limit."""
    room = {"alpha": Headroom(2, "instances 8 of 10 used"), "beta": Headroom(0, "max_nodes reached")}
    job = _job(5, "a", "b", "c")
    decision = place_jobs([job], ["alpha", "beta"], room)
    assert decision.placed == {}
    assert fits_nowhere(job, decision.unplaceable["job 5"]) == ("quota",
        "job 5 needs 3 nodes; alpha: room for 2 (instances 8 of 10 used); beta: room for 0 (max_nodes reached)")


def test_a_job_held_back_only_by_max_nodes_fails_with_kind_limit():
    """Only the pool's max_nodes binds: the kind is "limit"; a node of no job says "no room"."""
    clouds = [("beta", Headroom(0, "max_nodes reached", "limit"))]
    assert fits_nowhere(JobNodes(("gpu-2",)), clouds) == ("limit", "no room; beta: room for 0 (max_nodes reached)")


def test_room_taken_by_one_job_is_gone_for_the_next():
    """Headroom is consumed as jobs are placed: the third job finds no room left."""
    jobs = [_job(1, "a", "b"), _job(2, "c", "d"), _job(3, "e", "f")]
    decision = place_jobs(jobs, ["alpha", "beta"], {"alpha": Headroom(3), "beta": Headroom(2)})
    assert decision.placed == {"job 1": "alpha", "job 2": "beta"}
    assert list(decision.unplaceable) == ["job 3"]


def test_excluded_clouds_are_skipped_and_none_left_is_an_empty_list():
    """A job that already failed on a cloud in this run does not go back there."""
    decision = place_jobs([_job(1, "a")], ["alpha", "beta"], {}, excluded={"job 1": {"alpha"}})
    assert decision.placed == {"job 1": "beta"}
    decision = place_jobs([_job(1, "a")], ["alpha", "beta"], {}, excluded={"job 1": {"alpha", "beta"}})
    assert decision.unplaceable == {"job 1": []}


def test_unknown_headroom_is_tried():
    """A cloud whose limits could not be read is tried: its creates decide."""
    decision = place_jobs([_job(1, "a", "b")], ["alpha"], {"alpha": Headroom(None)})
    assert decision.placed == {"job 1": "alpha"}


def test_anchor_is_where_most_of_the_job_runs():
    """The cloud with most of a job's running nodes is its anchor; none when nothing runs."""
    assert anchor_of(["beta", "alpha", "beta"]) == "beta"
    assert anchor_of([]) is None
