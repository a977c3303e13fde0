"""`elastic slurm-conf --check`: the generated settings compared with slurmctld's running ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from elastic import slurm_conf_lines
from elastic.admin import slurm_conf

from tests.support.admin import CONFIG, RUNNING, RUNNING_22_05, RUNNING_23_11, make_config, node_fields

PROGRAMS = slurm_conf_lines.Programs(Path("/opt/elastic/bin/elastic-resume"), Path("/opt/elastic/bin/elastic-suspend"),
                              Path("/opt/elastic/bin/elastic-resume-fail"))


def running(**changes):
    values = dict(RUNNING_22_05, ResumeProgram=str(PROGRAMS.resume), SuspendProgram=str(PROGRAMS.suspend),
                  ResumeFailProgram=str(PROGRAMS.resume_fail), SuspendTimeout="150 sec", ResumeTimeout="900 sec")
    values.update(changes)
    return values


def test_matching_slurmctld_has_no_differences(tmp_path):
    """slurmctld running the generated block (as 22.05 prints it, with extra site items) matches."""
    config = make_config(tmp_path)
    have = running(SlurmctldParameters="enable_configless,idle_on_node_suspend", PrivateData="cloud,jobs")
    assert slurm_conf.power_save_differences(config, PROGRAMS, have) == []
    assert slurm_conf.node_differences(config, node_fields(config)) == []


@pytest.mark.parametrize("key, value", [
    ("ResumeTimeout", "1200 sec"), ("SuspendTime", "INFINITE"), ("ResumeProgram", "/usr/local/sbin/other"),
    ("PrivateData", "none"), ("CommunicationParameters", "(null)"), ("ResumeRate", "300 nodes/min"),
])
def test_each_differing_setting_is_reported(tmp_path, key, value):
    """A setting that differs from the generated block is one difference naming both values."""
    config = make_config(tmp_path)
    [difference] = slurm_conf.power_save_differences(config, PROGRAMS, running(**{key: value}))
    assert difference.subject == key and difference.have == value


def test_suspend_time_option_is_compared(tmp_path):
    """--suspend-time is what the running SuspendTime is compared with."""
    config = make_config(tmp_path)
    assert slurm_conf.power_save_differences(config, PROGRAMS, running(SuspendTime="300 sec"), suspend_time=300) == []


def test_cloud_reg_addrs_is_not_required_from_23_11(tmp_path):
    """23.11 dropped the cloud_reg_addrs option (it is the behaviour): its absence is no difference there."""
    config = make_config(tmp_path, CONFIG + "slurm: {addresses: none}\n")
    differences = slurm_conf.power_save_differences(config, PROGRAMS, running())
    assert [d.subject for d in differences] == ["SlurmctldParameters"]
    assert slurm_conf.power_save_differences(config, PROGRAMS, running(**RUNNING_23_11)) == []


def test_node_differences_are_grouped_into_hostlists(tmp_path):
    """Nodes with the same difference form one row; hidden nodes, sizes, features, partition and extra nodes show."""
    config = make_config(tmp_path)
    nodes = node_fields(config, cpu_001={"CPUTot": "2"}, cpu_002={"CPUTot": "2"}, cpu_003={"RealMemory": "900"},
                        cpu_004={"AvailableFeatures": "(null)", "Partitions": "debug"})
    del nodes["gpu-1"], nodes["gpu-2"]
    nodes["old-1"] = {"NodeName": "old-1", "State": "IDLE+CLOUD"}
    nodes["login"] = {"NodeName": "login", "State": "IDLE"}
    found = {d.subject: (d.want, d.have) for d in slurm_conf.node_differences(config, nodes)}
    assert found == {
        "cpu-[001-002]: CPUs": ("1", "2"),
        "cpu-003: RealMemory": ("1800", "900"),
        "cpu-004: Feature": ("cloud", "(none)"),
        "cpu-004: Partitions": ("cloud", "debug"),
        "gpu-[1-2]: node": ("CLOUD node", "not shown (not in slurm.conf, or hidden: PrivateData=cloud)"),
        "old-1: node": ("(in no pool)", "CLOUD node in slurm.conf"),
    }


def test_default_programs_are_the_console_scripts_beside_python(tmp_path):
    """Without --programs-dir the programs are elastic-resume etc. beside sys.executable."""
    programs = slurm_conf.default_programs()
    assert programs.resume == Path(sys.executable).parent / "elastic-resume"
    assert slurm_conf.default_programs(tmp_path).resume_fail == tmp_path / "elastic-resume-fail"
    assert slurm_conf.missing_programs(slurm_conf.default_programs(tmp_path)) == [
        tmp_path / "elastic-resume", tmp_path / "elastic-suspend", tmp_path / "elastic-resume-fail"]


def test_write_atomically_replaces_the_file_readable_by_slurmctld(tmp_path):
    """The include file is replaced whole, mode 0644, with no temporary left behind."""
    target = tmp_path / "elastic.conf"
    target.write_text("old\n")
    slurm_conf.write_atomically(target, "new\n")
    assert target.read_text() == "new\n" and target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["elastic.conf"]


@pytest.mark.parametrize("name", list(RUNNING))
def test_each_version_running_its_own_block_has_no_differences(tmp_path, name):
    """slurmctld of each version running the block slurm-conf writes for it (as that version's
    `scontrol show config` prints it) matches, for both address modes."""
    for text in (CONFIG, CONFIG + "slurm: {addresses: none}\n"):
        config = make_config(tmp_path, text)
        version = slurm_conf.slurm_version(running(**RUNNING[name]))
        lines = slurm_conf_lines.power_save_lines(config, PROGRAMS, version=version)
        block = dict(line.split("=", 1) for line in lines)
        have = running(**RUNNING[name], SlurmctldParameters=block["SlurmctldParameters"])
        assert slurm_conf.power_save_differences(config, PROGRAMS, have) == [], (name, text)


@pytest.mark.parametrize("name", ["23.11", "24.11", "26.05"])
def test_defunct_options_from_23_11_are_differences_to_remove(tmp_path, name):
    """A 22.05 block kept after an upgrade: NoAddrCache and cloud_reg_addrs are differences saying
    'remove'; TreeWidth=65533 (valid, only no longer needed) is none."""
    config = make_config(tmp_path, CONFIG + "slurm: {addresses: none}\n")
    have = running(**dict(RUNNING[name], CommunicationParameters="NoAddrCache", TreeWidth="65533",
                          SlurmctldParameters="cloud_reg_addrs,enable_configless"))
    found = {d.subject: (d.want, d.have) for d in slurm_conf.power_save_differences(config, PROGRAMS, have)}
    assert found == {
        "CommunicationParameters": ("remove NoAddrCache (defunct from 23.11)", "NoAddrCache"),
        "SlurmctldParameters": ("remove cloud_reg_addrs (defunct from 23.11)", "cloud_reg_addrs,enable_configless"),
    }


def test_22_05_lacking_what_it_needs_differs_and_23_02_no_longer_needs_privatedata(tmp_path):
    """22.05 and 23.02 still need NoAddrCache and TreeWidth=65533; PrivateData=cloud only 22.05."""
    config = make_config(tmp_path)
    lacking = {"CommunicationParameters": "(null)", "TreeWidth": "50", "PrivateData": "none"}
    assert sorted(d.subject for d in slurm_conf.power_save_differences(config, PROGRAMS, running(**lacking))) == [
        "CommunicationParameters", "PrivateData", "TreeWidth"]
    on_23_02 = running(**lacking, SLURM_VERSION="23.02.7")
    assert sorted(d.subject for d in slurm_conf.power_save_differences(config, PROGRAMS, on_23_02)) == [
        "CommunicationParameters", "TreeWidth"]


@pytest.mark.parametrize("shown", [None, "banana", ""])
def test_a_version_slurmctld_does_not_show_is_an_error(tmp_path, shown):
    """Without a readable SLURM_VERSION, --check cannot judge: a SlurmError (one line, exit 2)."""
    from elastic.errors import SlurmError

    have = running()
    if shown is None:
        del have["SLURM_VERSION"]
    else:
        have["SLURM_VERSION"] = shown
    with pytest.raises(SlurmError, match="SLURM_VERSION"):
        slurm_conf.power_save_differences(make_config(tmp_path), PROGRAMS, have)


def test_hidden_nodes_are_explained_by_version(tmp_path):
    """A pool node slurmctld does not show may be hidden by PrivateData before 23.02; from 23.02 it is not in
    slurm.conf."""
    config = make_config(tmp_path)
    nodes = node_fields(config)
    del nodes["gpu-1"]
    [old] = slurm_conf.node_differences(config, nodes)
    [new] = slurm_conf.node_differences(config, nodes, version=(24, 11, 5))
    assert "PrivateData=cloud" in old.have and new.have == "not shown (not in slurm.conf)"
