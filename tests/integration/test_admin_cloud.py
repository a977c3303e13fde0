"""The admin commands with the real openstacksdk over HTTP against the lab emulator, and a stand-in
scontrol that prints fixed `show node` / `show config` output and records every update."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from elastic import cli, slurm_conf_lines
from elastic.admin.slurm_conf import default_programs
from elastic.cloud import OpenStackCloud
from elastic.config import META_CLUSTER, META_NODE, META_POOL, load_config
from elastic.lab.cloud import LabCloud

from tests.support.configs import elastic_yaml
from tests.support.lab import PASSWORD, _get, check_rows, lab_cloud, server_id
from tests.support.programs import PROGRAMS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

POOLS = """\
cpu:
  nodes: cpu-[1-6]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1800, features: [cloud]}
  boot: {flavor: m1.small, image: debian-12, key_name: hpc}
  clouds:
    - {cloud: lab, network: private}
"""





# ---- the stand-in scontrol ----------------------------------------------------------------------

SCONTROL = """\
#!{python}
import json, os, sys
here = {here!r}
args = sys.argv[1:]
with open(os.path.join(here, "scontrol.calls"), "a") as log:
    log.write(json.dumps(args) + "\\n")
def show(name):
    path = os.path.join(here, name)
    if not os.path.exists(path):
        sys.stderr.write("slurm_load_node error: Unable to contact slurm controller (connect failure)\\n")
        sys.exit(1)
    with open(path) as handle:
        sys.stdout.write(handle.read())
if args == ["ping"]:
    show("ping.txt")
elif args[-2:] == ["show", "node"]:
    show("nodes.txt")
elif args == ["show", "config"]:
    show("config.txt")
elif args[:1] != ["update"]:
    sys.stderr.write("stand-in scontrol: unexpected %r\\n" % (args,))
    sys.exit(2)
"""


def node_line(name: str, state: str, *, cpus: int = 1, memory: int = 1800, features: str = "cloud",
              partition: str = "cloud", addr: str | None = None, reason: str | None = None) -> str:
    """One line of 22.05's `scontrol -a -o show node`."""
    line = (f"NodeName={name} Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv={cpus} CPUTot={cpus} CPULoad=N/A "
            f"AvailableFeatures={features} ActiveFeatures={features} Gres=(null) NodeAddr={addr or name} "
            f"NodeHostName={name} Port=6818  RealMemory={memory} AllocMem=0 FreeMem=N/A Sockets={cpus} Boards=1 "
            f"State={state} ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions={partition}  "
            f"BootTime=None SlurmdStartTime=None LastBusyTime=Unknown CfgTRES=cpu={cpus},mem={memory}M,billing={cpus} "
            f"AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 "
            f"ExtSensorsTemp=n/s")
    return line + (f" Reason={reason} [root@2026-01-01T00:00:00]" if reason else "")


def config_text(config, programs: slurm_conf_lines.Programs) -> str:
    """`scontrol show config` of a slurmctld running the power-save block slurm-conf generates."""
    settings = dict(line.split("=", 1) for line in slurm_conf_lines.power_save_lines(config, programs))
    for key in ("SuspendTime", "SuspendTimeout", "ResumeTimeout"):
        settings[key] += " sec"
    for key in ("ResumeRate", "SuspendRate"):
        settings[key] += " nodes/min"
    settings["SLURM_VERSION"] = "22.05.8"
    return "Configuration data as of 2026-01-01T00:00:00\n" + "".join(f"{k:<23} = {v}\n" for k, v in settings.items())


@dataclass
class StandInSlurm:
    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / "scontrol"

    def install(self) -> StandInSlurm:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path.write_text(SCONTROL.format(python=sys.executable, here=str(self.directory)))
        self.path.chmod(0o755)
        return self

    def up(self, nodes: dict[str, str], config: str = "") -> None:
        """slurmctld answers with these node states (name -> State) and this `show config`."""
        (self.directory / "ping.txt").write_text("Slurmctld(primary) at ctl is UP\n")
        (self.directory / "nodes.txt").write_text("".join(node_line(n, s) + "\n" for n, s in nodes.items()))
        (self.directory / "config.txt").write_text(config)

    def down(self) -> None:
        for name in ("ping.txt", "nodes.txt", "config.txt"):
            (self.directory / name).unlink(missing_ok=True)

    def calls(self) -> list[list[str]]:
        record = self.directory / "scontrol.calls"
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    def updates(self) -> list[list[str]]:
        return [call for call in self.calls() if call[:1] == ["update"]]


# ---- a site: emulator, clouds.yaml, stand-in Slurm, config ---------------------------------------


@dataclass
class Site:
    root: Path
    lab: LabCloud
    slurm: StandInSlurm
    clouds_yaml: Path

    def write_config(self, pools: str = POOLS, *, clouds_yaml: Path | None = None, extra: str = "") -> Path:
        path = self.root / "elastic.yaml"
        path.write_text(elastic_yaml(
            root=self.root, pools=pools, scontrol=self.slurm.path,
            clouds={"lab": {"clouds_yaml": clouds_yaml or self.clouds_yaml, "rate": 0, "api_timeout": 5}},
            extra="reconcile: {grace: 600}\n" + extra))
        return path

    def run(self, *argv: str) -> int:
        return cli.main([argv[0], "--config", str(self.root / "elastic.yaml"), *argv[1:]])

    def seed(self, name: str, *, age: float, status: str = "ACTIVE", cluster: str = "itest") -> str:
        server = self.lab.seed_server("lab", name, metadata={META_CLUSTER: cluster, META_NODE: name, META_POOL: "cpu"},
                                      status=status, age_seconds=age)
        return server_id(server)

    def servers(self) -> dict[str, list[str]]:
        """Live servers on the emulator (deleted or being deleted left out): name -> ids."""
        found: dict[str, list[str]] = {}
        for server in self.lab.servers("lab"):
            if _get(server, "task_state") == "deleting" or _get(server, "status") in ("DELETED", "SOFT_DELETED"):
                continue
            found.setdefault(_get(server, "name"), []).append(server_id(server))
        return {name: sorted(ids) for name, ids in found.items()}


@pytest.fixture
def site(tmp_path):
    with LabCloud({"clouds": {"lab": lab_cloud()}}) as lab:
        clouds_yaml = tmp_path / "clouds.yaml"
        lab.write_clouds_yaml(clouds_yaml)
        s = Site(tmp_path, lab, StandInSlurm(tmp_path / "slurm").install(), clouds_yaml)
        s.write_config()
        yield s


def problems(rows: list[dict]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in rows:
        if row["problem"]:
            found.setdefault(row["problem"], set()).add(row["node"])
    return found


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("elastic: error: "), err
    return err


# ---- status --------------------------------------------------------------------------------------


def test_status_flags_every_mismatch_kind(site, capsys):
    """Orphan, missing and duplicate are flagged from real server listings; a resuming node and a healthy one are
    not."""
    site.seed("cpu-1", age=3600)                              # node powered down: orphan
    site.seed("cpu-3", age=7200)                              # two servers, node allocated: duplicate
    site.seed("cpu-3", age=1200)
    site.seed("cpu-5", age=1200)                              # node idle and powered up: fine
    site.seed("cpu-6", age=3600, cluster="someone-else")      # not ours: never shown
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN", "cpu-2": "IDLE+CLOUD", "cpu-3": "ALLOCATED+CLOUD",
                   "cpu-4": "ALLOCATED+CLOUD+POWERING_UP", "cpu-5": "IDLE+CLOUD", "cpu-6": "IDLE+CLOUD+POWERED_DOWN"})
    assert site.run("status", "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert problems(data["rows"]) == {"orphan": {"cpu-1"}, "missing": {"cpu-2"}, "duplicate": {"cpu-3"}}
    by_node = {}
    for row in data["rows"]:
        by_node.setdefault(row["node"], []).append(row)
    assert len(by_node["cpu-3"]) == 2 and by_node["cpu-6"][0]["server"] is None
    assert by_node["cpu-4"][0]["note"].startswith("resume running")
    assert by_node["cpu-1"][0]["server"]["status"] == "ACTIVE" and by_node["cpu-1"][0]["server"]["age_seconds"] >= 3600
    assert site.run("status") == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NODE", "POOL", "SLURM"] and len(table) == 1 + 7 + 1
    assert site.slurm.updates() == []


# ---- reconcile -----------------------------------------------------------------------------------


def test_reconcile_repairs_every_mismatch_and_spares_a_booting_server(site, capsys):
    """--apply deletes the old orphan and the older duplicate, powers down the node without a server,
    and leaves the orphan that is still booting (younger than the grace period); a dry run changes nothing."""
    site.lab.set_faults("lab", stuck_in_build=True)
    orphan = site.seed("cpu-1", age=3600)
    booting = site.seed("cpu-6", age=30, status="BUILD")
    older = site.seed("cpu-3", age=7200)
    newer = site.seed("cpu-3", age=1200)
    healthy = site.seed("cpu-5", age=1200)
    foreign = site.seed("cpu-4", age=7200, cluster="someone-else")
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN", "cpu-2": "IDLE+CLOUD", "cpu-3": "ALLOCATED+CLOUD",
                   "cpu-4": "IDLE+CLOUD+POWERED_DOWN", "cpu-5": "IDLE+CLOUD", "cpu-6": "IDLE+CLOUD+POWERED_DOWN"})
    before = site.servers()

    assert site.run("reconcile") == 1
    plan = capsys.readouterr().out
    assert "nothing changed (use --apply)" in plan and site.servers() == before and site.slurm.updates() == []
    assert any(line.startswith("wait") and "cpu-6" in line for line in plan.splitlines())

    assert site.run("reconcile", "--apply") == 0
    capsys.readouterr()
    after = site.servers()
    assert "cpu-1" not in after and after["cpu-3"] == [newer] and after["cpu-6"] == [booting]
    assert after["cpu-5"] == [healthy] and foreign in after["cpu-4"] and orphan not in sum(after.values(), [])
    assert older not in after["cpu-3"]
    assert site.slurm.updates() == [["update", "nodename=cpu-2", "state=power_down_force",
                                     "reason=elastic: reconcile: server vanished"]]
    events = [json.loads(line) for line in (site.root / "elastic.log").read_text().splitlines()]
    assert PASSWORD not in (site.root / "elastic.log").read_text()
    assert {e["server"] for e in events if e["event"] == "cloud.delete"} == {orphan, older}


def test_reconcile_never_deletes_a_server_still_booting(site, capsys):
    """A BUILD server whose node Slurm shows powered down, younger than the grace period, survives --apply."""
    site.lab.set_faults("lab", stuck_in_build=True)
    booting = site.seed("cpu-1", age=5, status="BUILD")
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN"})
    assert site.run("reconcile", "--apply") == 0
    out = capsys.readouterr().out
    assert "younger than the grace period" in out
    assert site.servers() == {"cpu-1": [booting]} and site.lab.servers("lab")[0]["status"] == "BUILD"
    assert not [k for k in site.lab.request_counts("lab") if k.startswith("DELETE")]


FLOATING_POOLS = POOLS.replace("- {cloud: lab, network: private}",
                               "- {cloud: lab, network: private, floating_ip: public}")


def _resume(site: Site, hostlist: str) -> None:
    """resume.py as slurmctld runs it (bare environment, fds closed) against this site."""
    (site.root / "slurm.conf").write_text("# not read by the programs\n")
    result = subprocess.run([sys.executable, str(PROGRAMS["resume"]), hostlist], cwd="/", timeout=120,
                            env={"SLURM_CONF": str(site.root / "slurm.conf")}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert result.returncode == 0, (site.root / "elastic.log").read_text()


def test_reconcile_deletes_exactly_the_floating_ip_a_server_delete_left_behind(site, capsys):
    """A pool with floating IPs: resume gives two nodes a marked floating IP each; one server is
    deleted by another path (no release first), so Neutron keeps its IP, detached. reconcile shows it
    (dry run, nothing changed) and --apply deletes exactly it: the other node's IP, an unmarked IP and
    another cluster's IP (both detached, old) stay."""
    site.write_config(FLOATING_POOLS)
    config_path = site.root / "elastic.yaml"
    config_path.write_text(config_path.read_text().replace("reconcile: {grace: 600}", "reconcile: {grace: 2}"))
    _resume(site, "cpu-[1-2]")
    resumed = time.monotonic()
    ips = {ip["server"]: ip for ip in site.lab.floating_ips("lab")}
    servers = site.servers()
    assert set(ips) == {servers["cpu-1"][0], servers["cpu-2"][0]}
    assert {ip["description"] for ip in ips.values()} == {"elastic cluster=itest node=cpu-1",
                                                         "elastic cluster=itest node=cpu-2"}
    leaked, kept = ips[servers["cpu-1"][0]], ips[servers["cpu-2"][0]]
    foreign = {site.lab.seed_floating_ip("lab", "public", age_seconds=3600),
               site.lab.seed_floating_ip("lab", "public", description="elastic cluster=other node=cpu-1",
                                         age_seconds=3600)}
    cloud = OpenStackCloud("lab", load_config(config_path).clouds["lab"])
    cloud.delete_server(servers["cpu-1"][0])  # an admin's delete: Nova drops the port, Neutron keeps the IP
    deadline = time.monotonic() + 10
    while any(s["name"] == "cpu-1" for s in site.lab.servers("lab")) and time.monotonic() < deadline:
        time.sleep(0.05)
    detached = {ip["id"]: ip for ip in site.lab.floating_ips("lab")}[leaked["id"]]
    assert detached["port_id"] is None and detached["server"] is None
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN", "cpu-2": "IDLE+CLOUD"})
    time.sleep(max(0.0, resumed + 2.5 - time.monotonic()))  # past the grace period

    assert site.run("status") == 1
    out = capsys.readouterr().out
    assert (f"floating IP {leaked['address']} ({leaked['id']}) on lab of cpu-1 leaked (detached: its server is "
            "gone); `elastic reconcile --apply` deletes it") in out
    assert out.count("floating IP ") == 1 and not any(ip in out for ip in foreign)
    assert site.run("status", "--json") == 1
    assert json.loads(capsys.readouterr().out)["leaked_floating_ips"] == [
        {"cloud": "lab", "id": leaked["id"], "address": leaked["address"], "node": "cpu-1",
         "problem": "detached: its server is gone"}]

    assert site.run("reconcile") == 1
    out = capsys.readouterr().out
    assert leaked["address"] in out and "detached: its server is gone" in out and "nothing changed" in out
    assert kept["address"] not in out and len(site.lab.floating_ips("lab")) == 4

    assert site.run("reconcile", "--apply") == 0
    out = capsys.readouterr().out
    assert {ip["id"] for ip in site.lab.floating_ips("lab")} == {kept["id"], *foreign}
    assert site.servers()["cpu-2"] == servers["cpu-2"]
    events = [json.loads(line) for line in (site.root / "elastic.log").read_text().splitlines()]
    assert [e["id"] for e in events if e["event"] == "cloud.delete_floating_ip" and e["ok"]] == [leaked["id"]]
    assert site.run("reconcile") == 0 and "nothing to repair" in capsys.readouterr().out
    assert site.run("status") == 0 and "floating IP" not in capsys.readouterr().out


# ---- bad input: one line, exit 2, nothing changed ------------------------------------------------


def _nothing_changed(site, before) -> None:
    assert site.servers() == before and site.slurm.updates() == []


@pytest.mark.parametrize("command", [["status"], ["reconcile", "--apply"]])
def test_unknown_pool_changes_nothing(site, capsys, command):
    """--pool naming no pool: one line, exit 2, no cloud request at all."""
    site.seed("cpu-1", age=3600)
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN"})
    before, counts = site.servers(), site.lab.request_counts("lab")
    assert site.run(*command, "--pool", "gpu") == 2
    assert "unknown pool 'gpu' (pools in" in one_error_line(capsys)
    assert site.lab.request_counts("lab") == counts
    _nothing_changed(site, before)


def _cloud_not_listed(site, capsys, command) -> str:
    """Run status or reconcile --apply with the one cloud unlistable: exit 1, and the line that
    names the cloud and why (stdout for status, a warning on stderr for reconcile)."""
    assert site.run(*command) == 1
    captured = capsys.readouterr()
    text = captured.out if command == ["status"] else captured.err
    (line,) = [line for line in text.splitlines()
               if "cloud lab cannot be listed" in line or line.startswith("cloud lab:")]
    return line


@pytest.mark.parametrize("command", [["status"], ["reconcile", "--apply"]])
def test_unreadable_clouds_yaml_changes_nothing(site, capsys, command):
    """A clouds.yaml that is not a readable file: one line naming it, exit 1, nothing deleted."""
    site.seed("cpu-1", age=3600)
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN"})
    before = site.servers()
    missing = site.root / "no-such-clouds.yaml"
    site.write_config(clouds_yaml=missing)
    line = _cloud_not_listed(site, capsys, command)
    assert str(missing) in line and "config" in line
    _nothing_changed(site, before)


@pytest.mark.parametrize("command", [["status"], ["reconcile", "--apply"]])
def test_wrong_credentials_change_nothing(site, capsys, command):
    """A wrong password: one line saying authentication failed and where the credentials are, exit 1."""
    site.seed("cpu-1", age=3600)
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN"})
    before = site.servers()
    wrong = site.root / "wrong-clouds.yaml"
    wrong.write_text(site.clouds_yaml.read_text().replace(PASSWORD, "not-the-password"))
    site.write_config(clouds_yaml=wrong)
    line = _cloud_not_listed(site, capsys, command)
    assert "auth: " in line and f"check the credentials of entry 'lab' in {wrong}" in line
    assert "not-the-password" not in line
    _nothing_changed(site, before)


@pytest.mark.parametrize("command", [["status"], ["reconcile", "--apply"]])
def test_unreachable_cloud_changes_nothing(site, capsys, command):
    """A cloud that resets every connection: one line saying it cannot be reached, exit 1."""
    site.seed("cpu-1", age=3600)
    site.slurm.up({"cpu-1": "IDLE+CLOUD+POWERED_DOWN"})
    before = site.servers()
    site.lab.set_faults("lab", outage="reset")
    line = _cloud_not_listed(site, capsys, command)
    assert "unreachable: " in line and "cannot connect" in line and "is the cloud up" in line
    site.lab.set_faults("lab", outage=None)
    _nothing_changed(site, before)


# ---- check ---------------------------------------------------------------------------------------


def test_check_fails_on_what_the_cloud_lacks_and_skips_slurm_when_down(site, capsys):
    """A missing image and a flavor smaller than the Slurm node fail their rows (exit 1); Slurm down is one skip row."""
    site.write_config(POOLS.replace("real_memory: 1800", "real_memory: 4000").replace("debian-12", "debian-13"))
    site.slurm.down()
    assert site.run("check", "--programs-dir", str(sys.executable.rsplit("/", 1)[0])) == 1
    out = capsys.readouterr().out
    rows = check_rows(out)
    assert rows["cloud lab"].startswith("ok")
    size = rows["pool cpu: flavor m1.small size"]
    assert size.startswith("FAIL") and "real_memory: 1945" in size
    names = rows["pool cpu on lab: image and network"]
    assert names.startswith("FAIL") and "debian-13" in names
    assert rows["pool cpu on lab: key pair"].startswith("ok")
    assert rows["slurmctld"].startswith("skip") and "Slurm checks skipped" in rows["slurmctld"]


def test_check_reports_wrong_credentials_as_a_failed_row(site, capsys):
    """check with a wrong password: the cloud's row fails with the fix, its pool is skipped, exit 1."""
    wrong = site.root / "wrong-clouds.yaml"
    wrong.write_text(site.clouds_yaml.read_text().replace(PASSWORD, "not-the-password"))
    site.write_config(clouds_yaml=wrong)
    site.slurm.down()
    assert site.run("check") == 1
    out = capsys.readouterr().out
    cloud_row = check_rows(out)["cloud lab"]
    assert cloud_row.startswith("FAIL") and "auth: " in cloud_row
    assert "check the credentials of entry 'lab'" in cloud_row
    assert "not-the-password" not in out


ETC_CLOUDS = {
    "engage1": lab_cloud(
        flavors=[{"name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
                 {"name": "m1.xlarge-mem", "vcpus": 16, "ram": 65536, "disk": 160}],
        images=[{"name": "debian-12-slurm"}],
        networks=[{"name": "hpc-private", "cidr": "127.30.0.0/16"}],
        quotas={"instances": 100, "cores": 400, "ram": 2048000, "floating_ips": 0}),
    "campus": lab_cloud(
        flavors=[{"name": "c4.large", "vcpus": 4, "ram": 8192, "disk": 80}],
        images=[{"name": "debian-12-slurm"}],
        networks=[{"name": "campus-private", "cidr": "127.40.0.0/16"},
                  {"name": "campus-public", "cidr": "127.41.0.0/16", "external": True}],
        quotas={"instances": 16, "cores": 64, "ram": 131072, "floating_ips": 16}),
}


def test_reference_config_passes_check_against_matching_clouds_and_slurmctld(tmp_path, capsys):
    """etc/elastic.yaml, pointed at an emulator with the same flavors, images, networks and key, and at a
    slurmctld running the generated block, passes every check (exit 0)."""
    site_etc = tmp_path / "etc"
    shutil.copytree(REPO / "etc", site_etc)
    programs_dir = tmp_path / "bin"
    programs_dir.mkdir()
    for name in ("elastic-resume", "elastic-suspend", "elastic-resume-fail"):
        (programs_dir / name).write_text(f"#!{sys.executable}\n")
        (programs_dir / name).chmod(0o755)
    with LabCloud({"clouds": ETC_CLOUDS}) as lab:
        lab.write_clouds_yaml(tmp_path / "clouds.yaml")
        slurm = StandInSlurm(tmp_path / "slurm").install()
        text = (site_etc / "elastic.yaml").read_text()
        text = text.replace("/etc/openstack/clouds.yaml", str(tmp_path / "clouds.yaml"))
        text = text.replace("/var/log/slurm/elastic.log", str(tmp_path / "elastic.log"))
        text = text.replace("/var/lib/elastic", str(tmp_path / "state"))
        text = text.replace("addresses: scontrol", f"addresses: scontrol\n  scontrol: {slurm.path}")
        config_path = site_etc / "elastic.yaml"
        config_path.write_text(text)
        config = load_config(config_path)
        slurm.up({}, config_text(config, default_programs(programs_dir)))
        nodes = "".join(node_line(n, "IDLE+CLOUD+POWERED_DOWN", cpus=p.slurm.cpus, memory=p.slurm.real_memory,
                                  features=",".join(p.slurm.features), partition=p.partition) + "\n"
                        for p in config.pools.values() for n in p.node_names)
        (slurm.directory / "nodes.txt").write_text(nodes)
        assert cli.main(["check", "--config", str(config_path)]) == 0, capsys.readouterr().out
        out = capsys.readouterr().out
        assert "FAIL" not in out and out.splitlines()[-1].endswith("0 failed, 0 skipped")
        assert "pool cpu on campus: floating IP network" in out and "pool cpu: user-data compute.yaml.j2" in out
