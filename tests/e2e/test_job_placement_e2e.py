"""End to end with a real slurmctld: a multi-node job is placed whole on the cloud with room for it,
in its own server group, and nothing of it is left after suspend."""

from __future__ import annotations

import time

import pytest

from elastic.lab.world import LabWorld, lab_cloud_config

from tests.support.world import job_state, submit

pytestmark = pytest.mark.e2e

TOGETHER_POOL = """\
cpu:
  nodes: cpu-[1-3]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1000}
  boot: {flavor: m1.small, image: debian-12}
  server_group: soft-affinity
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
"""


def wait_for(predicate, timeout: float, what: str, world: LabWorld) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = world.log_file.read_text().splitlines()[-15:] if world.log_file.exists() else []
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                 + world.slurm.run("scontrol", "-o", "show", "job", check=False) + "\n"
                                 + world.slurm.run("scontrol", "-o", "show", "node", check=False) + "\n"
                                 + "\n".join(log))
        time.sleep(0.5)


def test_a_3_node_job_runs_whole_on_the_cloud_with_room_and_leaves_nothing(world):
    """sbatch -N 3 with room for 2 on east: all 3 servers boot on west (one server group), srun runs
    on all 3 nodes; after SuspendTime no server and no server group is left on either cloud."""
    w = world(pools_yaml=TOGETHER_POOL, power_save={"SuspendTime": 10},
              clouds={"east": lab_cloud_config(quotas={"instances": 2}), "west": lab_cloud_config()})
    job = submit(w, "-p", "cloud", "-N", "3", "--wrap", "srun sh -c 'echo ran-on-$SLURMD_NODENAME'; sleep 5")
    seen: dict[str, set[str]] = {"east": set(), "west": set()}
    groups: dict[str, set[int]] = {"east": set(), "west": set()}

    def completed() -> bool:
        for cloud in seen:
            seen[cloud] |= {s["name"] for s in w.cloud.servers(cloud)}
            groups[cloud] |= {len(g["members"]) for g in w.cloud.server_groups(cloud)}
        return job_state(w, job) == "COMPLETED"

    wait_for(completed, 120, "the 3-node job to complete", world=w)
    assert seen == {"east": set(), "west": {"cpu-1", "cpu-2", "cpu-3"}}
    assert 3 in groups["west"] and groups["east"] == set()
    output = (w.workdir / f"job-{job}.out").read_text()
    assert sorted(line for line in output.split() if line.startswith("ran-on-")) == [
        "ran-on-cpu-1", "ran-on-cpu-2", "ran-on-cpu-3"]

    def nothing_left() -> bool:
        return all(w.cloud.servers(c) == [] and w.cloud.server_groups(c) == [] for c in ("east", "west"))

    wait_for(nothing_left, 90, "suspend to delete every server and server group", world=w)
