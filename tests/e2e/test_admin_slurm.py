"""The admin commands against a real local slurmctld (elastic.lab.slurm.LocalSlurm: this machine's
Debian 12 22.05, or with --slurm 24.11 / 26.05 a Debian 13 / sid root's): slurm-conf --check and
check read its running config, status and reconcile its real node states, with the real
openstacksdk against the lab emulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elastic import cli, slurm_conf_lines
from elastic.admin.slurm_conf import default_programs
from elastic.config import META_CLUSTER, META_NODE, META_POOL, load_config
from elastic.lab.slurm import LocalSlurm
from elastic.lab.slurm.install import SlurmInstall, default_install

from tests.support.configs import elastic_yaml

pytestmark = pytest.mark.e2e

POOLS = """\
cpu:
  nodes: cpu-[1-4]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1800, features: [cloud]}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: lab, network: private}
"""


def write_programs(directory: Path) -> slurm_conf_lines.Programs:
    """Three do-nothing programs, as slurmctld accepts them (absolute, 0755)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("elastic-resume", "elastic-suspend", "elastic-resume-fail"):
        path = directory / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return default_programs(directory)


def write_config(tmp_path: Path, clouds_yaml: Path, *, pools: str = POOLS, extra: str = "") -> Path:
    path = tmp_path / "elastic.yaml"
    # The scontrol of the Slurm under test (with --slurm 24.11: the root's, entered from here).
    path.write_text(elastic_yaml(root=tmp_path, pools=pools, scontrol=default_install().scontrol,
                                 clouds={"lab": {"clouds_yaml": clouds_yaml, "rate": 0, "api_timeout": 10}},
                                 extra="reconcile: {grace: 600}\n" + extra))
    return path


@pytest.fixture
def local_slurm(tmp_path, monkeypatch, slurm_install: SlurmInstall) -> Iterator[Callable[..., LocalSlurm]]:
    """make(config_path, programs, **kwargs) -> a started LocalSlurm with the YAML's nodes and
    partitions and elastic's power-save timers; SLURM_CONF points elastic's scontrol at it."""
    if not slurm_install.available():
        pytest.fail(f"no slurmctld in {slurm_install.describe()}: ./run.sh installs Debian's slurmctld, "
                    "slurmd, slurm-client, munge")
    started: list[LocalSlurm] = []

    def make(config_path: Path, programs: slurm_conf_lines.Programs, **kwargs) -> LocalSlurm:
        config = load_config(config_path)
        generated = dict(line.split("=", 1) for line in slurm_conf_lines.power_save_lines(config, programs))
        power_save = {key: generated[key] for key in ("SuspendTime", "SuspendTimeout", "ResumeTimeout",
                                                      "ResumeRate", "SuspendRate")}
        power_save.update(kwargs.pop("power_save", {}))
        cluster = LocalSlurm(tmp_path / f"slurm{len(started)}", node_lines=slurm_conf_lines.node_lines(config),
                             partition_lines=slurm_conf_lines.partition_lines(config),
                             resume_program=str(programs.resume),
                             suspend_program=str(programs.suspend), resume_fail_program=str(programs.resume_fail),
                             power_save=power_save, slurm=slurm_install, **kwargs)
        started.append(cluster)
        cluster.start()
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf_path))
        return cluster

    yield make
    for cluster in started:
        cluster.stop()
    assert not [pid for cluster in started for pid in cluster.running_pids()]


def test_slurm_conf_check_names_exactly_what_slurmctld_runs_differently(tmp_path, capsys, local_slurm):
    """Against a slurmctld started from the generated lines, --check reports only the setting it lacks,
    then a YAML edit."""
    programs = write_programs(tmp_path / "bin")
    path = write_config(tmp_path, tmp_path / "clouds.yaml")
    local_slurm(path, programs)
    argv = ["slurm-conf", "--check", "--config", str(path), "--programs-dir", str(tmp_path / "bin")]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out.splitlines()
    # LocalSlurm's SlurmctldParameters has no enable_configless; everything else matches.
    assert [line.split()[0] for line in out[1:-1]] == ["SlurmctldParameters"]
    path.write_text(path.read_text().replace("real_memory: 1800", "real_memory: 3000"))
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "cpu-[1-4]: RealMemory  3000" in out and "1800" in out


# ---- with the emulator ---------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path):
    from elastic.lab.cloud import LabCloud

    from tests.support.lab import lab_cloud

    with LabCloud({"clouds": {"lab": lab_cloud()}}) as cloud:
        cloud.write_clouds_yaml(tmp_path / "clouds.yaml")
        yield cloud


def seed(lab, name: str, *, age: float, status: str = "ACTIVE") -> str:
    from tests.support.lab import server_id

    metadata = {META_CLUSTER: "itest", META_NODE: name, META_POOL: "cpu"}
    return server_id(lab.seed_server("lab", name, metadata=metadata, status=status, age_seconds=age))


def live_servers(lab) -> dict[str, list[str]]:
    from tests.support.lab import _get, server_id

    found: dict[str, list[str]] = {}
    for server in lab.servers("lab"):
        if _get(server, "task_state") != "deleting" and _get(server, "status") not in ("DELETED", "SOFT_DELETED"):
            found.setdefault(_get(server, "name"), []).append(server_id(server))
    return {name: sorted(ids) for name, ids in found.items()}


def power_up(slurm: LocalSlurm, name: str, *, register: bool) -> str:
    """Power a node up as slurmctld does for a job; with `register`, its slurmd starts as a booted VM's would."""
    slurm.run("scontrol", "update", f"nodename={name}", "state=power_up")
    slurm.wait_node_state(name, lambda st: "POWERING_UP" in st, 20)
    if not register:
        return slurm.node_state(name)
    slurm.start_slurmd(name)
    return slurm.wait_node_state(name, lambda st: "POWERING_UP" not in st and st.startswith("IDLE"), 30)


def test_status_and_reconcile_follow_real_node_states(tmp_path, capsys, lab, local_slurm):
    """With a real slurmctld: orphan, missing and duplicate are found and repaired; a POWERING_UP node
    without a server and a booting orphan are left alone; the repaired node ends powered down with our reason."""
    programs = write_programs(tmp_path / "bin")
    path = write_config(tmp_path, tmp_path / "clouds.yaml", pools=POOLS.replace("cpu-[1-4]", "cpu-[1-5]"))
    slurm = local_slurm(path, programs, cloud_reg_addrs=True, power_save={"SuspendTimeout": 5})
    orphan = seed(lab, "cpu-1", age=3600)
    assert power_up(slurm, "cpu-2", register=True) == "IDLE+CLOUD"
    power_up(slurm, "cpu-3", register=True)
    older, newer = seed(lab, "cpu-3", age=7200), seed(lab, "cpu-3", age=1200)
    power_up(slurm, "cpu-4", register=False)
    booting = seed(lab, "cpu-5", age=20, status="BUILD")

    assert cli.main(["status", "--json", "--config", str(path)]) == 1
    rows = json.loads(capsys.readouterr().out)["rows"]
    flagged = {(row["node"], row["problem"]) for row in rows if row["problem"]}
    assert flagged == {("cpu-1", "orphan"), ("cpu-2", "missing"), ("cpu-3", "duplicate"), ("cpu-5", "orphan")}
    [resuming] = [row for row in rows if row["node"] == "cpu-4"]
    assert "POWERING_UP" in resuming["slurm_state"] and resuming["note"].startswith("resume running")

    assert cli.main(["reconcile", "--apply", "--config", str(path)]) == 0
    capsys.readouterr()
    after = live_servers(lab)
    assert "cpu-1" not in after and after["cpu-3"] == [newer] and after["cpu-5"] == [booting]
    assert orphan not in sum(after.values(), []) and older not in sum(after.values(), [])
    slurm.wait_node_state("cpu-2", lambda st: "POWERING_DOWN" in st or "POWERED_DOWN" in st, 20)
    assert "Reason=elastic: reconcile: server vanished" in slurm.run("scontrol", "-o", "show", "node", "cpu-2")
    assert "POWERING_UP" in slurm.node_state("cpu-4")
    assert "POWERING" not in slurm.node_state("cpu-3")


def test_check_reads_the_running_slurmctld(tmp_path, capsys, lab, local_slurm):
    """check against a real slurmctld: version, programs, timeouts and nodes pass; the missing
    enable_configless only warns."""
    programs = write_programs(tmp_path / "bin")
    path = write_config(tmp_path, tmp_path / "clouds.yaml", pools=POOLS.replace("boot: {", "boot: {key_name: hpc, "))
    slurm = local_slurm(path, programs)
    assert cli.main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    from tests.support.lab import check_rows

    rows = {subject: line.split()[0] for subject, line in check_rows(out).items()}
    assert rows["slurmctld"] == "ok" and f"Slurm {slurm.version[0]:02d}.{slurm.version[1]:02d}" in out
    assert rows["ResumeProgram program"] == rows["ResumeTimeout"] == rows["slurm.conf nodes"] == "ok"
    assert rows["SlurmctldParameters"] == "warn"
