"""The admin commands against a real local slurmctld (Debian's 22.05, elastic.lab.slurm.LocalSlurm):
slurm-conf --check and check read its running config, status and reconcile its real node states,
with the real openstacksdk against the lab emulator."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elastic import cli, slurmconf
from elastic.admin.slurm_conf import default_programs
from elastic.config import load_config
from elastic.lab.slurm import LocalSlurm
from elastic.lab.slurm.cluster import SLURMCTLD

pytestmark = pytest.mark.integration

POOLS = """\
cpu:
  nodes: cpu-[1-4]
  partition: cloud
  slurm: {cpus: 1, real_memory: 1800, features: [cloud]}
  boot: {flavor: m1.small, image: debian-12}
  clouds:
    - {cloud: lab, network: private}
"""


def write_programs(directory: Path) -> slurmconf.Programs:
    """Three do-nothing programs, as slurmctld accepts them (absolute, 0755)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("elastic-resume", "elastic-suspend", "elastic-resume-fail"):
        path = directory / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return default_programs(directory)


def write_config(tmp_path: Path, clouds_yaml: Path, *, pools: str = POOLS, extra: str = "") -> Path:
    path = tmp_path / "elastic.yaml"
    indented = "".join(f"  {line}\n" for line in pools.splitlines())
    path.write_text(f"cluster: itest\nclouds:\n  lab: {{clouds_yaml: {clouds_yaml}, rate: 0, api_timeout: 10}}\n"
                    f"pools:\n{indented}slurm: {{scontrol: /usr/bin/scontrol}}\n"
                    f"timeouts: {{boot: 30, delete: 10, poll: 0.2, lock: 5}}\nreconcile: {{grace: 600}}\n"
                    f"log_file: {tmp_path / 'elastic.log'}\nstate_dir: {tmp_path / 'state'}\n{extra}")
    return path


@pytest.fixture
def local_slurm(tmp_path, monkeypatch) -> Iterator[Callable[..., LocalSlurm]]:
    """make(config_path, programs, **kwargs) -> a started LocalSlurm with the YAML's nodes and
    partitions and elastic's power-save timers; SLURM_CONF points elastic's scontrol at it."""
    if not os.access(SLURMCTLD, os.X_OK):
        pytest.fail(f"{SLURMCTLD} missing: ./run.sh installs Debian's slurmctld, slurmd, slurm-client, munge")
    started: list[LocalSlurm] = []

    def make(config_path: Path, programs: slurmconf.Programs, **kwargs) -> LocalSlurm:
        config = load_config(config_path)
        generated = dict(line.split("=", 1) for line in slurmconf.power_save_lines(config, programs))
        power_save = {key: generated[key] for key in ("SuspendTime", "SuspendTimeout", "ResumeTimeout",
                                                      "ResumeRate", "SuspendRate")}
        power_save.update(kwargs.pop("power_save", {}))
        cluster = LocalSlurm(tmp_path / f"slurm{len(started)}", node_lines=slurmconf.node_lines(config),
                             partition_lines=slurmconf.partition_lines(config), resume_program=str(programs.resume),
                             suspend_program=str(programs.suspend), resume_fail_program=str(programs.resume_fail),
                             power_save=power_save, **kwargs)
        started.append(cluster)
        cluster.start()
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf_path))
        return cluster

    yield make
    for cluster in started:
        cluster.stop()
    assert not [pid for cluster in started for pid in cluster.running_pids()]


def test_slurm_conf_check_names_exactly_what_slurmctld_runs_differently(tmp_path, capsys, local_slurm):
    """Against a slurmctld started from the generated lines, --check reports only the setting it lacks, then a YAML edit."""
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
