"""End to end: a real slurmctld calls our programs; the emulator's boot hook starts a real slurmd
per node. Assertions use Slurm's own view (scontrol/squeue/sacct-free job states) and the
emulator's server list."""

from __future__ import annotations

import time

import pytest

from elastic.lab.world import LabWorld, lab_cloud_config
from elastic.slurm import parse_node_line

from tests.support.world import job_state, submit

pytestmark = pytest.mark.e2e

CPU_POOL = """\
cpu:
  nodes: cpu-[1-3]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: lab, network: private}
"""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, world: LabWorld | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (explain(world) if world else ""))


def explain(world: LabWorld) -> str:
    """Slurm's and the cloud's view, and the end of elastic's log, for a failure message."""
    parts = ["", world.slurm.run("scontrol", "-o", "show", "job", check=False),
             world.slurm.run("scontrol", "-o", "show", "node", check=False),
             repr({c: [(s["name"], s["status"]) for s in world.cloud.servers(c)] for c in world.clouds})]
    if world.log_file.exists():
        parts.append("\n".join(world.log_file.read_text().splitlines()[-15:]))
    return "\n".join(parts)


def live_servers(world: LabWorld, cloud: str = "lab") -> list[dict]:
    return [s for s in world.cloud.servers(cloud) if s["task_state"] != "deleting"]


def job_node(world: LabWorld, job_id: int) -> str:
    out = world.slurm.run("scontrol", "-o", "show", "job", str(job_id))
    return next(f.split("=", 1)[1] for f in out.split() if f.startswith("NodeList="))


def node_field(world: LabWorld, node: str, key: str) -> str:
    return parse_node_line(world.slurm.run("scontrol", "-o", "show", "node", node).strip()).get(key, "")


def powered_down(world: LabWorld, node: str) -> bool:
    state = world.slurm.node_state(node)
    return "POWERED_DOWN" in state and "POWERING" not in state


def test_queued_jobs_boot_nodes_that_suspend_afterwards(world):
    """Three queued jobs boot three nodes and run; after SuspendTime the servers are gone and nodes idle~."""
    w = world(pools_yaml=CPU_POOL, power_save={"SuspendTime": 10})
    # Each job outlives the others' boots: with `hostname` alone, 26.05 ran the last job on a node
    # freed by the first instead of powering up a third.
    jobs = [submit(w, "-p", "cloud", "--wrap", "hostname; sleep 20") for _ in range(3)]
    # A node that finished early may already be suspending when the last job ends: note each
    # server's address and each job's node while they run, not afterwards.
    server_addresses: dict[str, str] = {}
    ran_on: dict[int, str] = {}
    node_addresses: dict[str, str] = {}  # Slurm's NodeAddr while the node was up

    def all_completed() -> bool:
        for server in w.cloud.servers("lab"):
            if server["addresses"].get("private"):
                server_addresses[server["name"]] = server["addresses"]["private"][0]["addr"]
        for job in jobs:
            fields = dict(f.split("=", 1) for f in w.slurm.run("scontrol", "-o", "show", "job", str(job)).split()
                          if "=" in f)
            if fields.get("BatchHost"):
                ran_on[job] = fields["BatchHost"]
        for node in ("cpu-1", "cpu-2", "cpu-3"):
            fields = parse_node_line(w.slurm.run("scontrol", "-o", "show", "node", node).strip())
            if "POWER" not in fields.get("State", "POWER") and fields.get("NodeAddr", node) != node:
                node_addresses[node] = fields["NodeAddr"]
        return all(job_state(w, j) == "COMPLETED" for j in jobs)

    wait_for(all_completed, 90, "the 3 jobs to complete", world=w)
    assert sorted(ran_on.values()) == ["cpu-1", "cpu-2", "cpu-3"]
    assert sorted(server_addresses) == ["cpu-1", "cpu-2", "cpu-3"]
    if w.slurm.version < (23, 11):
        assert node_addresses == server_addresses  # resume told Slurm each server's address
    else:
        # Resume told Slurm each server's address (the boot hook waits for it before slurmd
        # starts), then registration replaced it with the address slurmd connected from.
        assert node_addresses == {name: "127.0.0.1" for name in server_addresses}
    wait_for(lambda: all(powered_down(w, n) for n in ("cpu-1", "cpu-2", "cpu-3")), 90, "nodes to power down")
    wait_for(lambda: live_servers(w) == [], 30, "servers to be deleted")
    assert all("IDLE" in w.slurm.node_state(n) for n in ("cpu-1", "cpu-2", "cpu-3"))


def test_power_up_and_power_down_by_hand(world):
    """scontrol power_up boots a node without a job; power_down deletes its server."""
    w = world(pools_yaml=CPU_POOL, power_save={"SuspendTime": 300})
    w.slurm.run("scontrol", "update", "nodename=cpu-2", "state=power_up")
    wait_for(lambda: "POWER" not in w.slurm.node_state("cpu-2") and "IDLE" in w.slurm.node_state("cpu-2"),
             60, "cpu-2 to come up idle")
    assert [s["name"] for s in live_servers(w)] == ["cpu-2"]
    w.slurm.run("scontrol", "update", "nodename=cpu-2", "state=power_down")
    wait_for(lambda: live_servers(w) == [], 60, "cpu-2's server to be deleted")
    wait_for(lambda: powered_down(w, "cpu-2"), 60, "cpu-2 to be powered down")


TWO_CLOUDS_POOL = """\
cpu:
  nodes: cpu-[1-2]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
"""


def test_error_on_first_cloud_runs_job_on_second(world):
    """A boot that ends in ERROR on the pool's first cloud is retried on its second, and the job runs."""
    w = world(pools_yaml=TWO_CLOUDS_POOL, clouds={
        "east": lab_cloud_config(faults={"no_valid_host_fraction": 1.0}), "west": lab_cloud_config()})
    job = submit(w, "-p", "cloud", "--wrap", "hostname")
    wait_for(lambda: job_state(w, job) == "COMPLETED", 90, "the job to complete")
    assert live_servers(w, "east") == []
    assert [s["name"] for s in live_servers(w, "west")] == [job_node(w, job)]


BROKEN_AND_GOOD_POOLS = """\
broken:
  nodes: bad-1
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000, weight: 1}
  boot: {flavor: m1.small, image: no-such-image}
  clouds:
    - {cloud: lab, network: private}
good:
  nodes: good-1
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000, weight: 10}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: lab, network: private}
"""


def test_permanent_failure_sets_node_down_and_job_runs_elsewhere(world):
    """A missing image leaves the node DOWN with an elastic: reason; the job is requeued onto another pool's node."""
    w = world(pools_yaml=BROKEN_AND_GOOD_POOLS)
    job = submit(w, "-p", "cloud", "--wrap", "hostname")
    wait_for(lambda: w.slurm.node_state("bad-1").startswith("DOWN") and powered_down(w, "bad-1"), 60,
             "bad-1 to be down~ (DOWN and powered down, not still POWERING_UP)")
    assert node_field(w, "bad-1", "Reason").startswith("elastic: not-found: lab: image 'no-such-image'")
    # Slurm holds a requeued job until its credentials expire (the lab's cred_expire) before it may start again.
    wait_for(lambda: job_state(w, job) == "COMPLETED", 120, "the requeued job to complete", world=w)
    assert job_node(w, job) == "good-1"
    assert [s["name"] for s in live_servers(w)] == ["good-1"]


def test_silent_node_hits_resume_timeout_and_resume_fail_cleans_up(world):
    """An ACTIVE server whose slurmd never registers: ResumeTimeout, ResumeFail deletes it, node idle~ again."""
    w = world(pools_yaml=CPU_POOL, power_save={"ResumeTimeout": 15, "SuspendTime": 300}, silent_nodes={"cpu-1"})
    w.slurm.run("scontrol", "update", "nodename=cpu-1", "state=power_up")
    wait_for(lambda: [s["name"] for s in live_servers(w)] == ["cpu-1"], 30, "cpu-1's server")
    wait_for(lambda: live_servers(w) == [], 90, "ResumeFail to delete the server")
    # 22.05 keeps NOT_RESPONDING on the idle~ node until it registers again after its next boot.
    wait_for(lambda: powered_down(w, "cpu-1") and w.slurm.node_state("cpu-1").startswith("IDLE"), 60,
             "cpu-1 back to idle~")


TWO_POOLS_TWO_CLOUDS = """\
cpu:
  nodes: cpu-[1-4]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: east, network: private}
big:
  nodes: big-[1-4]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000}
  boot: {flavor: m1.medium, image: debian-12}
  clouds:
    - {cloud: west, network: private}
"""


def test_two_pools_two_clouds_eight_jobs(world):
    """Eight jobs over two pools on two clouds all run, and nothing is left afterwards."""
    w = world(pools_yaml=TWO_POOLS_TWO_CLOUDS, clouds={"east": lab_cloud_config(), "west": lab_cloud_config()},
              power_save={"SuspendTime": 10})
    jobs = [submit(w, "-p", "cloud", "--wrap", "sleep 2") for _ in range(8)]
    for job in jobs:
        wait_for(lambda j=job: job_state(w, j) == "COMPLETED", 150, f"job {job}")
    assert {job_node(w, j) for j in jobs} == {"cpu-1", "cpu-2", "cpu-3", "cpu-4", "big-1", "big-2", "big-3", "big-4"}
    wait_for(lambda: live_servers(w, "east") == [] and live_servers(w, "west") == [], 120, "every server deleted")
    wait_for(lambda: all(powered_down(w, n) for n in ("cpu-1", "big-4")), 60, "nodes powered down")


def test_admin_edits_pools_and_slurm_follows(world):
    """Admin adds nodes and changes the flavor in the YAML, regenerates node lines, restarts Slurm:
    new nodes boot with the new flavor; a node removed from the YAML loses its server via reconcile."""
    import os
    import subprocess
    import sys

    before = CPU_POOL.replace("cpu-[1-3]", "cpu-[1-2]")
    w = world(pools_yaml=before, power_save={"SuspendTime": 300}, extra_config="reconcile: {grace: 1}\n")
    w.slurm.run("scontrol", "update", "nodename=cpu-[1-2]", "state=power_up")
    wait_for(lambda: len([s for s in live_servers(w) if s["status"] == "ACTIVE"]) == 2, 60, "cpu-1 and cpu-2 up")
    after = CPU_POOL.replace("cpu-[1-3]", "cpu-[2-4]").replace("flavor: m1.small", "flavor: m1.medium")
    w.rewrite_config(after)
    assert "cpu-4" in w.slurm.run("scontrol", "show", "node", "cpu-4")
    env = {**os.environ, **w.slurm.env}
    reconcile = subprocess.run([sys.executable, "-m", "elastic.cli", "reconcile", "--apply", "--config",
                                str(w.elastic_yaml)], env=env, capture_output=True, text=True, timeout=120)
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    wait_for(lambda: sorted(s["name"] for s in live_servers(w)) == ["cpu-2"], 60, "cpu-1's server to be deleted")
    w.slurm.run("scontrol", "update", "nodename=cpu-4", "state=power_up")
    wait_for(lambda: "POWER" not in w.slurm.node_state("cpu-4") and "IDLE" in w.slurm.node_state("cpu-4"), 60,
             "cpu-4 up")
    flavors = {s["name"]: s["flavor"] for s in live_servers(w)}
    assert flavors == {"cpu-2": "m1.small", "cpu-4": "m1.medium"}
