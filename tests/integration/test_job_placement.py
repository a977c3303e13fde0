"""Job-aware placement through the real programs, run as slurmctld runs them (SLURM_RESUME_FILE in
both schemas), against two emulated clouds over real HTTP with the real openstacksdk.

A (`east`) comes first in every pool, B (`west`) second. The emulator records every request, so a
test can show that no create was sent that the quota read already knew would fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from elastic.cloud import OpenStackCloud
from elastic.config import META_CLUSTER, load_config
from elastic.hostlists import expand
from elastic.lab.cloud import LabCloud

from tests.support.lab import lab_cloud
from tests.support.programs import REPO, config_text, make_site

pytestmark = pytest.mark.integration

A, B = "east", "west"

POOLS = """\
cpu:
  nodes: cpu-[1-6]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
aon:
  nodes: aon-[1-3]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  placement: spread
  all_or_nothing: true
  clouds:
    - {cloud: east, network: private}
grp:
  nodes: grp-[1-3]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  server_group: affinity
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
"""


def cloud_spec(cidr: str, **overrides) -> dict:
    """An emulated cloud with plenty of quota and its own address range."""
    quotas = {"instances": 100, "cores": 400, "ram": 1024000, "floating_ips": 50}
    return lab_cloud(networks=[{"name": "private", "cidr": cidr}], quotas=quotas, boot_seconds=0.1, **overrides)


def live(lab: LabCloud, cloud: str) -> list[dict]:
    """Our servers on a cloud that are not being deleted."""
    return [s for s in lab.servers(cloud)
            if s["task_state"] != "deleting" and s["metadata"].get(META_CLUSTER) == "itest"]


def names(servers: list[dict]) -> list[str]:
    return sorted(s["name"] for s in servers)


def slurm_shows(site, states: dict[str, str]) -> None:
    """What `scontrol -a -o show node` prints from now on: name -> State."""
    (site.root / "show-node.txt").write_text("".join(
        f"NodeName={n} NodeAddr={n} NodeHostName={n} State={s} Partitions=cloud\n" for n, s in states.items()))


def state_updates(calls: list[list[str]]) -> dict[str, tuple[str, str | None]]:
    """The last state (and reason) each node was given with `scontrol update ... state=`."""
    states = {}
    for call in calls:
        args = dict(a.split("=", 1) for a in call[1:] if "=" in a)
        if call[:1] == ["update"] and "state" in args:
            for node in expand(args["nodename"]):
                states[node] = (args["state"], args.get("reason"))
    return states


def resume_file(schema: str, jobs: dict[int, str], alloc: dict[int, str] | None = None) -> str:
    """SLURM_RESUME_FILE as Slurm 22.05 or 23.02+ writes it for these jobs (id -> hostlist)."""
    every = ",".join(jobs.values())
    if schema == "22.05":
        return json.dumps({"jobs": [{"job_id": j, "nodes": n} for j, n in jobs.items()], "all_nodes": every})
    return json.dumps({"all_nodes_resume": every, "jobs": [
        {"job_id": j, "nodes_alloc": (alloc or {}).get(j, n), "nodes_resume": n, "partition": "cloud",
         "features": None, "reservation": None, "oversubscribe": "NO", "extra": None} for j, n in jobs.items()]})


# The programs' recording scontrol, which also answers `scontrol -a -o show node` from
# show-node.txt and `scontrol -o show job` from show-job.txt once they exist.
SCONTROL = """\
#!{python}
import json, os, sys
with open({record!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
answers = {{("show", "node"): {shown!r}, ("show", "job"): {jobs!r}}}
path = answers.get(tuple(sys.argv[-2:]))
if path and os.path.exists(path):
    with open(path) as handle:
        sys.stdout.write(handle.read())
"""


@pytest.fixture
def world(tmp_path):
    lab = LabCloud({"clouds": {A: cloud_spec("127.10.0.0/16"), B: cloud_spec("127.11.0.0/16")}})
    lab.start()
    site = make_site(tmp_path / "site")
    script = site.root / "scontrol"
    script.write_text(SCONTROL.format(python=sys.executable, record=str(site.record),
                                      shown=str(site.root / "show-node.txt"), jobs=str(site.root / "show-job.txt")))
    script.chmod(0o755)
    clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
    site.write_config(config_text(site, clouds_yaml, clouds={A: {}, B: {}}, pools=POOLS))
    try:
        yield lab, site
    finally:
        lab.stop()


def creates(lab: LabCloud, cloud: str) -> int:
    return lab.request_counts(cloud).get("POST /servers", 0)


def limit_reads(lab: LabCloud, cloud: str) -> int:
    return lab.request_counts(cloud).get("GET /limits", 0)


@pytest.mark.parametrize("schema", ["22.05", "23.02"])
def test_a_3_node_job_with_room_for_2_on_A_lands_whole_on_B(world, schema):
    """A's instance quota is 2: the job's 3 servers all boot on B; A gets one quota read and no create."""
    lab, site = world
    lab.set_quota(A, instances=2)
    result = site.run("resume", "cpu-[1-3]", resume_file=resume_file(schema, {41: "cpu-[1-3]"}))
    assert result.returncode == 0
    assert names(live(lab, B)) == ["cpu-1", "cpu-2", "cpu-3"] and live(lab, A) == []
    assert creates(lab, A) == 0 and limit_reads(lab, A) == 1 and creates(lab, B) == 3
    assert state_updates(site.calls()) == {}  # no node failed


def test_without_a_resume_file_the_nodes_are_placed_one_by_one(world):
    """No job known (a manual power_up): nodes fill A's 2 free instances and the third goes to B.
    Jobs of one node have nothing to keep together: no quota is read, and the third create is
    refused by A (403 quota) before it goes to B."""
    lab, site = world
    lab.set_quota(A, instances=2)
    assert site.run("resume", "cpu-[1-3]").returncode == 0
    assert len(live(lab, A)) == 2 and len(live(lab, B)) == 1
    assert limit_reads(lab, A) == 0 and limit_reads(lab, B) == 0
    refused = [r["status"] for r in lab.requests(A) if r["endpoint"] == "POST /servers" and r["status"] != 202]
    assert creates(lab, A) == 3 and refused == [403]
    assert state_updates(site.calls()) == {}  # no node failed


def test_an_invalid_resume_file_never_stops_resume(world):
    """A resume file that is not JSON is logged and ignored: every node is served, one by one."""
    lab, site = world
    result = site.run("resume", "cpu-[1-2]", resume_file="{not json")
    assert result.returncode == 0 and len(live(lab, A)) == 2
    assert any(e["event"] == "resume.resume_file_invalid" for e in site.log_events())


@pytest.mark.parametrize("schema", ["22.05", "23.02"])
def test_two_jobs_share_A_and_B_without_splitting(world, schema):
    """A has room for 3: the 4-node job (placed first) goes to B, the 2-node job to A; neither is split."""
    lab, site = world
    lab.set_quota(A, instances=3)
    text = resume_file(schema, {51: "cpu-[1-2]", 52: "cpu-[3-6]"})
    assert site.run("resume", "cpu-[1-6]", resume_file=text).returncode == 0
    assert names(live(lab, A)) == ["cpu-1", "cpu-2"]
    assert names(live(lab, B)) == ["cpu-3", "cpu-4", "cpu-5", "cpu-6"]
    assert creates(lab, A) == 2  # nothing sent that the quota read knew would fail


def test_a_job_that_fits_nowhere_fails_at_once_without_a_create(world):
    """Room for 1 on A and 2 on B: the 3-node job is requeued at once, its reason naming both clouds."""
    lab, site = world
    lab.set_quota(A, instances=1)
    lab.set_quota(B, instances=2)
    result = site.run("resume", "cpu-[1-3]", resume_file=resume_file("23.02", {61: "cpu-[1-3]"}))
    assert result.returncode == 1
    assert creates(lab, A) == 0 and creates(lab, B) == 0
    state, reason = state_updates(site.calls())["cpu-2"]
    assert state == "power_down_force"
    assert reason == ("elastic: quota: job 61 needs 3 nodes; east: room for 1 (instances 0 of 1 used); "
                      "west: room for 2 (instances 0 of 2 used)")


def test_the_rest_of_a_job_joins_the_cloud_its_other_nodes_run_on(world):
    """23.02's nodes_alloc: the job's cpu-4 runs on B, so cpu-[5-6] resumed now go to B too."""
    lab, site = world
    lab.set_quota(A, instances=1)
    assert site.run("resume", "cpu-4").returncode == 0
    assert names(live(lab, A)) == ["cpu-4"]
    lab.set_quota(A, instances=100)
    lab.reset_requests()
    text = resume_file("23.02", {71: "cpu-[5-6]"}, alloc={71: "cpu-[4-6]"})
    assert site.run("resume", "cpu-[5-6]", resume_file=text).returncode == 0
    assert names(live(lab, A)) == ["cpu-4", "cpu-5", "cpu-6"] and live(lab, B) == []


@pytest.mark.parametrize("schema", ["22.05", "23.02"])
def test_all_or_nothing_releases_a_partial_job(world, schema):
    """Room for 2 of the job's 3 nodes: the 2 servers made are deleted at once and all 3 nodes are
    requeued (power_down_force, idle~) with a reason naming the job."""
    lab, site = world
    lab.set_quota(A, instances=2)
    result = site.run("resume", "aon-[1-3]", resume_file=resume_file(schema, {81: "aon-[1-3]"}))
    assert result.returncode == 1
    assert live(lab, A) == [] and creates(lab, A) == 3
    updates = state_updates(site.calls())
    assert {node: state for node, (state, _) in updates.items()} == dict.fromkeys(
        ["aon-1", "aon-2", "aon-3"], "power_down_force")
    refused = [n for n, (_, reason) in updates.items() if reason.startswith("elastic: quota: job 81 (all_or_nothing)")]
    released = [n for n, (_, reason) in updates.items()
                if reason.startswith("elastic: job: job 81 (all_or_nothing): released: ")]
    assert len(refused) == 1 and len(released) == 2


def _reconcile(site) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elastic.cli", "reconcile", "--apply",
                           "--config", str(site.root / "elastic.yaml")],
                          env={"SLURM_CONF": str(site.slurm_conf), "PATH": os.defpath}, cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("schema", ["22.05", "23.02"])
def test_server_groups_are_created_per_job_and_go_with_their_last_server(world, schema):
    """server_group: affinity: one group for the job holds its 3 servers; a partial suspend keeps
    it, the last suspend deletes it."""
    lab, site = world
    assert site.run("resume", "grp-[1-3]", resume_file=resume_file(schema, {91: "grp-[1-3]"})).returncode == 0
    (group,) = lab.server_groups(A)
    assert group["name"] == "itest-grp-job91" and len(group["members"]) == 3
    assert site.run("suspend", "grp-1").returncode == 0
    assert [len(g["members"]) for g in lab.server_groups(A)] == [2]
    assert site.run("suspend", "grp-[2-3]").returncode == 0
    assert lab.server_groups(A) == [] and live(lab, A) == []


def test_hard_affinity_without_room_on_a_host_moves_the_job_and_its_group(world):
    """A's hosts hold 2 servers each: the third member of the affinity group gets No valid host, so
    the job moves whole to B; A keeps no server and no group of it."""
    lab, site = world
    lab.stop()
    crowded = LabCloud({"clouds": {A: cloud_spec("127.10.0.0/16", host_capacity=2),
                                   B: cloud_spec("127.11.0.0/16")}}, port=0)
    crowded.start()
    try:
        clouds_yaml = crowded.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, clouds={A: {}, B: {}}, pools=POOLS))
        result = site.run("resume", "grp-[1-3]", resume_file=resume_file("23.02", {93: "grp-[1-3]"}))
        assert result.returncode == 0
        assert live(crowded, A) == [] and crowded.server_groups(A) == []
        (group,) = crowded.server_groups(B)
        assert len(group["members"]) == 3 and names(live(crowded, B)) == ["grp-1", "grp-2", "grp-3"]
    finally:
        crowded.stop()


def test_reconcile_deletes_our_empty_groups_whose_job_holds_no_node(world):
    """Empty groups of ours are deleted once Slurm shows no job holding a node; the group of a
    running job and another cluster's group are kept."""
    lab, site = world
    config = load_config(site.root / "elastic.yaml")
    east = OpenStackCloud(A, config.clouds[A])
    for name in ("itest-grp-job95", "itest-grp-job96", "other-grp-job95"):
        east.create_server_group(name, "affinity")
    slurm_shows(site, {f"grp-{i}": "IDLE+CLOUD+POWERED_DOWN" for i in (1, 2, 3)})
    (site.root / "show-job.txt").write_text(
        "JobId=96 JobName=x UserId=u(1) JobState=RUNNING Reason=None NodeList=grp-3\n"
        "JobId=95 JobName=x UserId=u(1) JobState=COMPLETED Reason=None NodeList=grp-[1-2]\n")
    result = _reconcile(site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server group itest-grp-job95 on east: deleted" in result.stdout
    assert sorted(g["name"] for g in lab.server_groups(A)) == ["itest-grp-job96", "other-grp-job95"]


def test_status_shows_each_nodes_job_and_server_group(world):
    """`elastic status --json`: a node's jobs from `scontrol show job`, its server's group from the cloud."""
    lab, site = world
    assert site.run("resume", "grp-[1-2]", resume_file=resume_file("22.05", {97: "grp-[1-2]"})).returncode == 0
    slurm_shows(site, {"grp-1": "ALLOCATED+CLOUD", "grp-2": "ALLOCATED+CLOUD", "grp-3": "IDLE+CLOUD+POWERED_DOWN"})
    (site.root / "show-job.txt").write_text(
        "JobId=97 JobName=x UserId=u(1) JobState=RUNNING Reason=None NodeList=grp-[1-2]\n")
    result = subprocess.run([sys.executable, "-m", "elastic.cli", "status", "--json", "--pool", "grp",
                             "--config", str(site.root / "elastic.yaml")],
                            env={"SLURM_CONF": str(site.slurm_conf), "PATH": os.defpath}, cwd=str(REPO),
                            capture_output=True, text=True, timeout=120)
    rows = {row["node"]: row for row in json.loads(result.stdout)["rows"]}
    assert [(rows[n]["jobs"], rows[n]["server_group"]) for n in ("grp-1", "grp-2", "grp-3")] == [
        ([97], "itest-grp-job97"), ([97], "itest-grp-job97"), ([], None)]
