"""resume.py, suspend.py and resume_fail.py run as slurmctld runs them (fds closed, bare env),
with the real openstacksdk talking HTTP to the lab emulator and a recording scontrol."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.lab.cloud import LabCloud

from tests.support.programs import config_text, make_site

pytestmark = pytest.mark.integration

PASSWORD = "pw-7f3a9c-not-in-logs"
FLAVORS = [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}]


def lab_cloud(**overrides) -> dict:
    cloud = {
        "boot_seconds": 0.2, "delete_seconds": 0.1, "flavors": FLAVORS, "images": [{"name": "debian-12"}],
        "networks": [{"name": "private", "cidr": "127.10.0.0/16"},
                     {"name": "public", "cidr": "127.20.0.0/16", "external": True}],
        "quotas": {"instances": 100, "cores": 400, "ram": 1024000, "floating_ips": 50},
        "auth": {"username": "demo", "password": PASSWORD, "project_name": "demo",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
    }
    cloud.update(overrides)
    return cloud


ONE_POOL = """\
cpu:
  nodes: cpu-[001-006]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: lab, network: private}
"""

TWO_POOLS_TWO_CLOUDS = """\
cpu:
  nodes: cpu-[001-030]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: east, network: private}
    - {cloud: west, network: private}
gpu:
  nodes: gpu-[01-20]
  slurm: {cpus: 1, real_memory: 1800}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: west, network: private, floating_ip: public}
    - {cloud: east, network: private}
"""


@pytest.fixture
def one_cloud(tmp_path):
    with LabCloud({"clouds": {"lab": lab_cloud()}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, pools=ONE_POOL))
        yield lab, site


def _ours(node: str, pool: str = "cpu") -> dict[str, str]:
    return {META_CLUSTER: "itest", META_NODE: node, META_POOL: pool}


def _live(lab, cloud: str) -> list[dict]:
    return [s for s in lab.servers(cloud) if s["task_state"] != "deleting"]


def _address_updates(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[:1] == ["update"] and any(a.startswith("nodeaddr=") for a in c)]


def _state_updates(calls: list[list[str]]) -> dict[str, tuple[str, str | None]]:
    import hostlist

    states = {}
    for call in calls:
        args = dict(a.split("=", 1) for a in call[1:] if "=" in a)
        if "state" in args:
            for node in hostlist.expand_hostlist(args["nodename"]):
                states[node] = (args["state"], args.get("reason"))
    return states


def test_resume_boots_servers_and_registers_addresses(one_cloud):
    """resume.py under Slurm's conditions boots one server per node and sends all addresses in one scontrol call."""
    lab, site = one_cloud
    result = site.run("resume", "cpu-[001-003]",
                      resume_file=json.dumps({"jobs": [{"job_id": 7, "nodes": "cpu-[001-003]"}],
                                              "all_nodes": "cpu-[001-003]"}))
    assert result.returncode == 0, site.log_file.read_text()
    servers = _live(lab, "lab")
    assert sorted(s["name"] for s in servers) == ["cpu-001", "cpu-002", "cpu-003"]
    assert all(s["status"] == "ACTIVE" and s["metadata"][META_CLUSTER] == "itest" for s in servers)
    (update,) = _address_updates(site.calls())
    addresses = dict(zip(update[1].split("=", 1)[1].split(","), update[2].split("=", 1)[1].split(","), strict=True))
    assert set(addresses) == {"cpu-001", "cpu-002", "cpu-003"}
    assert all(a.startswith("127.10.") for a in addresses.values())
    started = [e for e in site.log_events() if e["event"] == "resume.start"]
    assert started and started[0]["jobs"][0]["job_id"] == 7


def test_resume_twice_adopts_instead_of_duplicating(one_cloud):
    """A second resume of the same nodes adopts their servers: still one server per node."""
    lab, site = one_cloud
    assert site.run("resume", "cpu-[001-002]").returncode == 0
    assert site.run("resume", "cpu-[001-002]").returncode == 0
    assert sorted(s["name"] for s in _live(lab, "lab")) == ["cpu-001", "cpu-002"]


@pytest.mark.skipif(sys.executable.startswith("/tmp"),
                    reason="stevedore keeps no entry-point cache for an interpreter under /tmp (stevedore/_cache.py)")
def test_a_run_without_home_keeps_the_entry_point_cache_in_the_state_dir(one_cloud):
    """slurmctld gives no HOME (and Debian's slurm user's home is /nonexistent): stevedore's scan of
    the installed entry points (keystoneauth's auth plugins) is kept in the state dir, so the next
    run reads it instead of scanning every package again."""
    lab, site = one_cloud
    assert site.run("resume", "cpu-001").returncode == 0
    kept = list((site.root / "state" / "cache" / "python-entrypoints").iterdir())
    assert len(kept) == 1 and "keystoneauth1.plugin" in json.loads(kept[0].read_text())["groups"]
    written = kept[0].stat().st_mtime_ns
    assert site.run("suspend", "cpu-001").returncode == 0
    assert kept[0].stat().st_mtime_ns == written  # read, not written again


def test_a_finished_run_leaves_the_clouds_shared_pacing(one_cloud):
    """A run's heartbeat in pacing.json makes the runs starting within HEARTBEAT_SECONDS share each
    cloud's rate with it: a finished run takes it away, so the next one (Slurm's resume right after
    a suspend) is not slowed by a run that is over."""
    lab, site = one_cloud
    for program in ("resume", "suspend"):
        assert site.run(program, "cpu-[001-002]").returncode == 0, site.log_file.read_text()
        pacing = json.loads((site.root / "state" / "pacing.json").read_text())
        assert pacing["clouds"]["lab"]["runs"] == {}, program


def test_duplicate_servers_with_one_name_are_reduced_to_one(one_cloud):
    """Two servers of ours named for one node: resume keeps one, suspend then deletes every one."""
    lab, site = one_cloud
    lab.seed_server("lab", "cpu-004", metadata=_ours("cpu-004"), status="ACTIVE", age_seconds=100)
    lab.seed_server("lab", "cpu-004", metadata=_ours("cpu-004"), status="ACTIVE", age_seconds=10)
    assert site.run("resume", "cpu-004").returncode == 0
    assert len([s for s in _live(lab, "lab") if s["name"] == "cpu-004"]) == 1
    lab.seed_server("lab", "cpu-004", metadata=_ours("cpu-004"), status="ACTIVE")
    assert site.run("suspend", "cpu-004").returncode == 0
    assert _live(lab, "lab") == []


def test_suspend_deletes_only_our_servers(one_cloud):
    """suspend.py deletes our servers for the nodes and leaves a same-named server of another cluster."""
    lab, site = one_cloud
    assert site.run("resume", "cpu-[001-002]").returncode == 0
    lab.seed_server("lab", "cpu-003", metadata={META_CLUSTER: "other"})
    assert site.run("suspend", "cpu-[001-003]").returncode == 0
    assert [s["name"] for s in _live(lab, "lab")] == ["cpu-003"]
    assert _state_updates(site.calls()) == {}


def test_error_servers_fall_back_to_the_next_cloud(tmp_path):
    """Servers that go ERROR (no valid host) on the first cloud are deleted and booted on the second."""
    with LabCloud({"clouds": {"east": lab_cloud(faults={"no_valid_host_flavors": ["m1.small"]}),
                              "west": lab_cloud()}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, clouds={"east": {}, "west": {}}, pools=TWO_POOLS_TWO_CLOUDS))
        assert site.run("resume", "cpu-[001-004]").returncode == 0, site.log_file.read_text()
        assert _live(lab, "east") == []
        assert sorted(s["name"] for s in _live(lab, "west")) == ["cpu-001", "cpu-002", "cpu-003", "cpu-004"]


def test_fifty_nodes_two_pools_two_clouds_one_out_of_quota(tmp_path):
    """50 nodes in two pools on two clouds, the first cloud's quota at 10: all boot, overflow on the second."""
    with LabCloud({"clouds": {"east": lab_cloud(quotas={"instances": 10, "cores": 400, "ram": 1024000,
                                                        "floating_ips": 50}),
                              "west": lab_cloud()}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, clouds={"east": {}, "west": {}}, pools=TWO_POOLS_TWO_CLOUDS))
        result = site.run("resume", "cpu-[001-030],gpu-[01-20]", timeout=300)
        assert result.returncode == 0, site.log_file.read_text()[-3000:]
        east, west = _live(lab, "east"), _live(lab, "west")
        assert len(east) == 10 and len(east) + len(west) == 50
        assert len({s["name"] for s in east + west}) == 50
        updates = _address_updates(site.calls())
        addrs: dict[str, str] = {}
        for update in updates:  # one call per poll that found servers ACTIVE
            names = update[1].split("=", 1)[1].split(",")
            assert not set(names) & set(addrs), "an address was sent twice"
            addrs.update(zip(names, update[2].split("=", 1)[1].split(","), strict=True))
        assert len(addrs) == 50
        polls = sum(lab.request_counts(c).get("GET /servers/detail", 0) for c in ("east", "west"))
        assert len(updates) <= polls < 50
        gpu_on_west = [s["name"] for s in west if s["name"].startswith("gpu")]
        assert gpu_on_west and all(addrs[n].startswith("127.20.") for n in gpu_on_west)  # floating IPs
        assert site.run("suspend", "cpu-[001-030],gpu-[01-20]", timeout=300).returncode == 0
        assert _live(lab, "east") == [] and _live(lab, "west") == []


def test_rate_limit_storm_is_ridden_out(one_cloud):
    """Under a 429 storm every node boots exactly once. Which calls meet the 429s depends on the
    pacing (it backs off after the first), so the test asserts that the storm happened, not where."""
    lab, site = one_cloud
    site.write_config(config_text(site, site.root / "clouds.yaml", pools=ONE_POOL, boot_timeout=120))
    lab.set_faults("lab", rate_limit_per_second=2)
    result = site.run("resume", "cpu-[001-006]", timeout=300)
    assert result.returncode == 0, site.log_file.read_text()[-3000:]
    assert sorted(s["name"] for s in _live(lab, "lab")) == [f"cpu-00{i}" for i in range(1, 7)]
    assert any(r["status"] == 429 for r in lab.log.records("lab"))


def test_api_outage_fails_nodes_with_power_down_force(one_cloud):
    """With the only cloud unreachable, resume exits 1 and every node gets power_down_force with a reason."""
    lab, site = one_cloud
    lab.set_faults("lab", outage="reset")
    result = site.run("resume", "cpu-[001-002]", timeout=300)
    assert result.returncode == 1
    states = _state_updates(site.calls())
    assert set(states) == {"cpu-001", "cpu-002"}
    assert all(state == "power_down_force" and reason.startswith("elastic: unreachable: lab:")
               for state, reason in states.values())
    lab.clear_faults("lab")
    assert lab.servers("lab") == []


def test_api_outage_on_first_cloud_falls_back(tmp_path):
    """An outage of the pool's first cloud boots the nodes on its second cloud."""
    with LabCloud({"clouds": {"east": lab_cloud(faults={"outage": "reset"}), "west": lab_cloud()}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, clouds={"east": {}, "west": {}}, pools=TWO_POOLS_TWO_CLOUDS))
        assert site.run("resume", "cpu-[001-002]", timeout=300).returncode == 0, site.log_file.read_text()[-3000:]
        assert sorted(s["name"] for s in _live(lab, "west")) == ["cpu-001", "cpu-002"]


def test_missing_image_sets_node_down(one_cloud):
    """An image missing on the cloud is permanent: node DOWN with an elastic: reason, no server left."""
    lab, site = one_cloud
    lab.remove_image("lab", "debian-12")
    assert site.run("resume", "cpu-001").returncode == 1
    state, reason = _state_updates(site.calls())["cpu-001"]
    assert state == "down" and reason.startswith("elastic: not-found") and "debian-12" in reason
    assert lab.servers("lab") == []


def test_suspend_of_nodes_whose_pool_was_removed(one_cloud):
    """Servers of nodes whose pool was removed from the YAML are still deleted by suspend."""
    lab, site = one_cloud
    lab.seed_server("lab", "old-01", metadata=_ours("old-01", pool="retired"))
    assert site.run("suspend", "old-01").returncode == 0
    assert _live(lab, "lab") == []


def test_resume_fail_deletes_and_resumes_node(one_cloud):
    """resume_fail.py deletes the node's server and sets state=resume."""
    lab, site = one_cloud
    lab.seed_server("lab", "cpu-005", metadata=_ours("cpu-005"))
    assert site.run("resume-fail", "cpu-005").returncode == 0
    assert _live(lab, "lab") == []
    assert _state_updates(site.calls())["cpu-005"] == ("resume", None)


def test_unwritable_history_is_logged_and_nodes_still_served(tmp_path):
    """With history.json unwritable (a directory in its place), a quota fallback and a resume-fail
    still do their work and exit 0; the lost history changes are logged as errors."""
    with LabCloud({"clouds": {"east": lab_cloud(quotas={"instances": 1, "cores": 400, "ram": 1024000,
                                                        "floating_ips": 50}),
                              "west": lab_cloud()}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, clouds={"east": {}, "west": {}}, pools=TWO_POOLS_TWO_CLOUDS))
        (site.root / "state" / "history.json").mkdir(parents=True)

        assert site.run("resume", "cpu-[001-003]").returncode == 0, site.log_file.read_text()[-3000:]
        assert len(_live(lab, "east")) == 1 and len(_live(lab, "west")) == 2
        assert site.run("resume-fail", "cpu-001").returncode == 0, site.log_file.read_text()[-3000:]
        assert _state_updates(site.calls())["cpu-001"] == ("resume", None)

        unsaved = [e for e in site.log_events() if e["event"] == "history.unsaved"]
        assert unsaved and all(e["level"] == "error" and "history.json" in e["error"] for e in unsaved)


def test_concurrent_resume_and_suspend_leave_at_most_nothing(one_cloud):
    """A suspend racing a resume of the same node ends with no server left once both finish."""
    lab, site = one_cloud
    lab.set_faults("lab", latency_seconds=0.05)
    results = {}

    def run(program):
        results[program] = site.run(program, "cpu-006", timeout=300)

    resume = threading.Thread(target=run, args=("resume",))
    resume.start()
    # The suspend starts once the resume's create is in (a resume process starts and looks first:
    # seconds on a loaded machine, so the wait is generous; it ends as soon as the server shows).
    created = False
    give_up = time.monotonic() + 60
    while not created and time.monotonic() < give_up:
        created = bool(lab.servers("lab"))
        if not created:
            threading.Event().wait(0.02)
    run("suspend")
    resume.join(300)
    assert created
    assert results["suspend"].returncode == 0
    assert _live(lab, "lab") == []


def test_two_concurrent_resumes_make_one_server(one_cloud):
    """Two resumes of the same nodes at once create one server per node (locks + look before create)."""
    lab, site = one_cloud
    threads = [threading.Thread(target=site.run, args=("resume", "cpu-[001-003]")) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(s["name"] for s in _live(lab, "lab")) == ["cpu-001", "cpu-002", "cpu-003"]


@pytest.mark.parametrize("cap", ["2.12", "2.96"])
def test_resume_and_suspend_at_both_microversion_caps(tmp_path, cap):
    """Boot and delete work against a Liberty-era cap (2.12) and a recent one (2.96)."""
    with LabCloud({"clouds": {"lab": lab_cloud(max_microversion=cap)}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, pools=ONE_POOL))
        assert site.run("resume", "cpu-[001-002]").returncode == 0, site.log_file.read_text()[-3000:]
        assert len(_live(lab, "lab")) == 2
        assert site.run("suspend", "cpu-[001-002]").returncode == 0
        assert _live(lab, "lab") == []


def test_bad_config_exits_2_without_touching_cloud_or_slurm(one_cloud):
    """A malformed config: exit 2, no request to the cloud, no scontrol call."""
    lab, site = one_cloud
    site.write_config("cluster: itest\nclouds: {}\n")
    lab.reset_requests()
    assert site.run("resume", "cpu-001").returncode == 2
    assert lab.requests() == [] and site.calls() == []


def test_logs_hold_no_secrets(one_cloud):
    """The JSON log records each cloud call but never the cloud password."""
    lab, site = one_cloud
    assert site.run("resume", "cpu-001").returncode == 0
    text = site.log_file.read_text()
    assert '"cloud.create"' in text
    assert PASSWORD not in text
