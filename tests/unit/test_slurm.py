from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Sequence

import pytest

from elastic.errors import SlurmError, UsageError
from elastic.slurm import (
    NodeState,
    Slurm,
    find_command,
    parse_node_line,
    parse_nodes,
    parse_version,
    subprocess_runner,
    version_of_config,
    version_text,
)

SCONTROL = "/usr/bin/scontrol"

# `scontrol -o show node` lines in the layout of Slurm 22.05's slurm_sprint_node_table().
POWERED_DOWN = (
    "NodeName=cpu-001 CoresPerSocket=1 CPUAlloc=0 CPUEfctv=4 CPUTot=4 CPULoad=N/A "
    "AvailableFeatures=cloud ActiveFeatures=cloud Gres=(null) NodeAddr=cpu-001 NodeHostName=cpu-001 "
    "RealMemory=7500 AllocMem=0 FreeMem=N/A Sockets=4 Boards=1 "
    "State=IDLE+CLOUD+POWERED_DOWN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A "
    "Partitions=cloud BootTime=None SlurmdStartTime=None LastBusyTime=2024-03-01T09:00:00 "
    "CfgTRES=cpu=4,mem=7500M,billing=4 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 "
    "ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s"
)
FAILED = (
    "NodeName=cpu-002 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUEfctv=4 CPUTot=4 CPULoad=0.00 "
    "AvailableFeatures=cloud ActiveFeatures=cloud Gres=(null) NodeAddr=10.0.0.5 NodeHostName=vm-5 "
    "Version=22.05.8 OS=Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)  "
    "RealMemory=7500 AllocMem=0 FreeMem=7000 Sockets=4 Boards=1 "
    "State=DOWN+CLOUD+POWERED_DOWN+NOT_RESPONDING ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A "
    "Partitions=cloud  BootTime=None SlurmdStartTime=None LastBusyTime=2024-03-01T09:00:00 "
    "CfgTRES=cpu=4,mem=7500M,billing=4 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 "
    "ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s "
    "Reason=elastic: quota: cpus=4 wanted, Quota exceeded [slurm@2024-03-01T10:05:00] "
    "Comment=site note x=y Extra={\"rack\": \"r1\"}"
)
BOOTING = (
    "NodeName=gpu7 CoresPerSocket=1 CPUAlloc=4 CPUEfctv=4 CPUTot=4 CPULoad=N/A AvailableFeatures=(null) "
    "ActiveFeatures=(null) Gres=(null) NodeAddr=gpu7 NodeHostName=gpu7 RealMemory=1000 AllocMem=0 "
    "FreeMem=N/A Sockets=4 Boards=1 State=ALLOCATED+CLOUD+DRAIN+POWERING_UP ThreadsPerCore=1 TmpDisk=0 "
    "Weight=1 Owner=N/A MCS_label=N/A Partitions=gpu BootTime=None SlurmdStartTime=None "
    "LastBusyTime=2024-03-01T09:00:00 CfgTRES=cpu=4 AllocTRES=cpu=4 CapWatts=n/a CurrentWatts=0 AveWatts=0 "
    "ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s Reason=down for test [root@2024-03-01T10:00:00]"
)
SHOW_NODE = "\n".join([POWERED_DOWN, FAILED, BOOTING]) + "\n"


class FakeRunner:
    """Records every argv; answers from a queue of outputs (an exception in the queue is raised)."""

    def __init__(self, *answers: str | Exception):
        self.calls: list[list[str]] = []
        self.answers = list(answers)

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        answer = self.answers.pop(0) if self.answers else ""
        if isinstance(answer, Exception):
            raise answer
        return answer


# ---- nodes --------------------------------------------------------------------------------------


def test_nodes_parses_state_flags_and_addresses():
    """A powered-down cloud node: base state, flags, address and no reason."""
    node = Slurm(FakeRunner(SHOW_NODE)).nodes()["cpu-001"]
    assert node == NodeState(name="cpu-001", state="IDLE+CLOUD+POWERED_DOWN", base="IDLE",
                             flags=frozenset({"CLOUD", "POWERED_DOWN"}), reason="", addr="cpu-001",
                             hostname="cpu-001")
    assert node.cloud and node.powered_down and not node.down and not node.powering_up


def test_nodes_reason_with_spaces_and_equals_is_one_value():
    """A reason holding spaces and an unknown `key=` stays whole, without scontrol's [user@time] suffix."""
    node = Slurm(FakeRunner(SHOW_NODE)).nodes()["cpu-002"]
    assert node.reason == "elastic: quota: cpus=4 wanted, Quota exceeded"
    assert node.down and node.not_responding and node.powered_down
    assert (node.addr, node.hostname) == ("10.0.0.5", "vm-5")


def test_nodes_reason_at_end_of_line():
    """A reason printed last on the line ends at the line's end."""
    node = Slurm(FakeRunner(SHOW_NODE)).nodes()["gpu7"]
    assert node.reason == "down for test"
    assert node.powering_up and node.drain and node.base == "ALLOCATED"


def test_nodes_makes_one_call_for_all_and_filters():
    """Named nodes come from one `scontrol -a -o show node`; unknown names are simply absent."""
    run = FakeRunner(SHOW_NODE)
    nodes = Slurm(run, scontrol=SCONTROL).nodes(["gpu7", "cpu-001", "nope-1"])
    assert sorted(nodes) == ["cpu-001", "gpu7"]
    assert run.calls == [[SCONTROL, "-a", "-o", "show", "node"]]


def test_nodes_with_none_in_the_system():
    """scontrol's "No nodes in the system" gives an empty result."""
    assert Slurm(FakeRunner("No nodes in the system\n")).nodes() == {}


def test_nodes_unparseable_output_is_a_slurm_error():
    """A line that is not a node record raises SlurmError quoting it."""
    with pytest.raises(SlurmError, match="cannot parse line: 'slurm_load_node error"):
        Slurm(FakeRunner("slurm_load_node error: Unable to contact slurm controller\n")).nodes()


def test_nodes_passes_runner_errors_on():
    """A failing scontrol reaches the caller as SlurmError."""
    with pytest.raises(SlurmError, match="boom"):
        Slurm(FakeRunner(SlurmError("boom"))).nodes()


def test_parse_node_line_free_text_fields():
    """OS, Comment and Extra keep their spaces; a known key after them starts a new field."""
    fields = parse_node_line(FAILED)
    assert fields["OS"] == "Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"
    assert fields["RealMemory"] == "7500"
    assert fields["Comment"] == "site note x=y"
    assert fields["Extra"] == '{"rack": "r1"}'
    assert fields["AllocTRES"] == "" and fields["CfgTRES"] == "cpu=4,mem=7500M,billing=4"


def test_parse_node_line_unknown_key_outside_free_text():
    """A key a newer Slurm adds between ordinary fields is parsed as its own field."""
    fields = parse_node_line("NodeName=n1 NewThing=7 State=IDLE")
    assert fields == {"NodeName": "n1", "NewThing": "7", "State": "IDLE"}


def test_parse_nodes_multiline_reason_keeps_continuation():
    """A multi-line reason, joined by scontrol -o with spaces, drops only the [user@time] suffix."""
    line = "NodeName=n1 State=DOWN Reason=first [root@2024-01-01T00:00:00]        second line"
    assert parse_nodes(line)["n1"].reason == "first        second line"


# ---- update_addresses --------------------------------------------------------------------------


def test_update_addresses_one_call_in_matching_order():
    """Addresses and hostnames go in one call, as comma lists in the order of the names."""
    run = FakeRunner()
    Slurm(run, scontrol=SCONTROL).update_addresses({"cpu-003": "10.0.0.3", "cpu-001": "10.0.0.1"},
                                                   {"cpu-001": "h1", "cpu-003": "h3"})
    assert run.calls == [[SCONTROL, "update", "nodename=cpu-003,cpu-001", "nodeaddr=10.0.0.3,10.0.0.1",
                          "nodehostname=h3,h1"]]


def test_update_addresses_without_hostnames():
    """Without hostnames, only nodename and nodeaddr are sent."""
    run = FakeRunner()
    Slurm(run, scontrol=SCONTROL).update_addresses({"cpu-001": "10.0.0.1"})
    assert run.calls == [[SCONTROL, "update", "nodename=cpu-001", "nodeaddr=10.0.0.1"]]


def test_update_addresses_empty_makes_no_call():
    """An empty batch runs nothing."""
    run = FakeRunner()
    Slurm(run).update_addresses({})
    assert run.calls == []


def test_update_addresses_hostnames_must_match_nodes():
    """Hostnames for other nodes than the addresses are refused before any call."""
    run = FakeRunner()
    with pytest.raises(ValueError, match="same nodes"):
        Slurm(run).update_addresses({"a": "10.0.0.1"}, {"b": "h"})
    assert run.calls == []


@pytest.mark.parametrize("addrs", [{"a": "10.0.0.1,10.0.0.2"}, {"a": ""}, {"a b": "10.0.0.1"}])
def test_update_addresses_rejects_items_that_break_the_lists(addrs):
    """A comma, blank or empty item would shift the positional matching: refused, no call."""
    run = FakeRunner()
    with pytest.raises(ValueError, match="comma list"):
        Slurm(run).update_addresses(addrs)
    assert run.calls == []


# ---- set_state ----------------------------------------------------------------------------------


def test_set_state_one_call_with_compressed_names_and_reason():
    """Nodes go compressed into one call; the reason is one argv element with its spaces."""
    run = FakeRunner()
    Slurm(run, scontrol=SCONTROL).set_state(["cpu-002", "cpu-001", "gpu7"], "down", "elastic: quota: no room")
    assert run.calls == [[SCONTROL, "update", "nodename=cpu-[001-002],gpu7", "state=down",
                          "reason=elastic: quota: no room"]]


def test_set_state_without_reason():
    """A state that needs no reason is sent without one."""
    run = FakeRunner()
    Slurm(run, scontrol=SCONTROL).set_state(["cpu-001"], "resume")
    assert run.calls == [[SCONTROL, "update", "nodename=cpu-001", "state=resume"]]


def test_set_state_reason_newlines_become_spaces():
    """A multi-line reason is sent as one line, so `scontrol show node` stays one line per node."""
    run = FakeRunner()
    Slurm(run).set_state(["n1"], "power_down_force", "elastic: boot: fault\nNo valid host")
    assert run.calls[0][-1] == "reason=elastic: boot: fault No valid host"


@pytest.mark.parametrize("state", ["down", "drain"])
def test_set_state_down_and_drain_need_reason(state):
    """down and drain without a reason raise ValueError and run nothing."""
    run = FakeRunner()
    with pytest.raises(ValueError, match="needs a reason"):
        Slurm(run).set_state(["n1"], state)
    assert run.calls == []


def test_set_state_unknown_state():
    """A state scontrol would not take is refused before any call."""
    run = FakeRunner()
    with pytest.raises(ValueError, match="unknown node state 'up'"):
        Slurm(run).set_state(["n1"], "up")
    assert run.calls == []


def test_set_state_empty_makes_no_call():
    """No nodes, no call."""
    run = FakeRunner()
    Slurm(run).set_state([], "power_down_force", "elastic: x")
    assert run.calls == []


# ---- config, ping, reconfigure ----------------------------------------------------------------


def test_config_parses_key_value_lines():
    """`scontrol show config` becomes a dict; header, section titles and status lines are skipped."""
    output = (
        "Configuration data as of 2024-03-01T10:00:00\n"
        "AccountingStorageBackupHost = (null)\n"
        "ResumeProgram           = /usr/local/sbin/elastic-resume\n"
        "SlurmctldParameters     = cloud_reg_addrs,enable_configless\n"
        "SuspendExcNodes         = \n"
        "\nCgroup Support Configuration:\n"
        "ResumeProgram           = shadowed\n"
        "\nSlurmctld(primary) at localhost is UP\n"
    )
    run = FakeRunner(output)
    config = Slurm(run, scontrol=SCONTROL).config()
    assert config["ResumeProgram"] == "/usr/local/sbin/elastic-resume"
    assert config["SlurmctldParameters"] == "cloud_reg_addrs,enable_configless"
    assert config["SuspendExcNodes"] == "" and config["AccountingStorageBackupHost"] == "(null)"
    assert not any(key.startswith(("Configuration", "Slurmctld(")) for key in config)
    assert run.calls == [[SCONTROL, "show", "config"]]


@pytest.mark.parametrize(("answer", "up"), [
    ("Slurmctld(primary) at localhost is UP\n", True),
    ("Slurmctld(primary) at ctl1 is DOWN\nSlurmctld(backup) at ctl2 is UP\n", False),
    ("", False),
    (SlurmError("scontrol ping: exit 1: ..."), False),
])
def test_ping(answer, up):
    """ping is True only when the primary controller is UP; a failing scontrol is False."""
    run = FakeRunner(answer)
    assert Slurm(run, scontrol=SCONTROL).ping() is up
    assert run.calls == [[SCONTROL, "ping"]]


def test_reconfigure():
    """reconfigure runs `scontrol reconfigure`."""
    run = FakeRunner()
    Slurm(run, scontrol=SCONTROL).reconfigure()
    assert run.calls == [[SCONTROL, "reconfigure"]]


# ---- subprocess_runner ------------------------------------------------------------------------


def test_unit_tests_cannot_run_programs():
    """The unit-test guard refuses a real program run (subprocess is never reached)."""
    with pytest.raises(AssertionError, match="pass a fake runner"):
        subprocess_runner()(["true"])


def test_subprocess_runner_returns_stdout(mocker):
    """argv goes to subprocess.run as a list, with stdin closed, our env and timeout, in a session of its
    own (slurmscriptd's killpg of our group must not take a started scontrol with it); stdout is returned."""
    run = mocker.patch("elastic.slurm.subprocess.run",
                       return_value=subprocess.CompletedProcess([], 0, stdout="out\n", stderr=""))
    assert subprocess_runner(env={"SLURM_CONF": "/x"}, timeout=5)([SCONTROL, "ping"]) == "out\n"
    run.assert_called_once_with([SCONTROL, "ping"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                env={"SLURM_CONF": "/x"}, timeout=5, check=False, start_new_session=True)


def test_subprocess_runner_nonzero_exit(mocker):
    """A non-zero exit is a SlurmError naming the first argv elements and stderr's first line."""
    mocker.patch("elastic.slurm.subprocess.run", return_value=subprocess.CompletedProcess(
        [], 1, stdout="", stderr="scontrol: error: Invalid node name specified\nmore\n"))
    with pytest.raises(SlurmError) as caught:
        subprocess_runner()([SCONTROL, "update", "nodename=x", "state=resume"])
    assert str(caught.value) == f"{SCONTROL} update nodename=x: exit 1: scontrol: error: Invalid node name specified"


def test_subprocess_runner_error_on_stdout(mocker):
    """With nothing on stderr, the first line of stdout explains the failure ("Node x not found")."""
    mocker.patch("elastic.slurm.subprocess.run",
                 return_value=subprocess.CompletedProcess([], 1, stdout="Node x not found\n", stderr=""))
    with pytest.raises(SlurmError, match="exit 1: Node x not found$"):
        subprocess_runner()([SCONTROL, "show", "node", "x"])


def test_subprocess_runner_timeout(mocker):
    """A hung scontrol becomes a SlurmError after the timeout."""
    mocker.patch("elastic.slurm.subprocess.run", side_effect=subprocess.TimeoutExpired(SCONTROL, 5))
    with pytest.raises(SlurmError, match="no answer after 5s"):
        subprocess_runner(timeout=5)([SCONTROL, "ping"])


def test_subprocess_runner_missing_program(mocker):
    """A program that cannot be started becomes a SlurmError."""
    mocker.patch("elastic.slurm.subprocess.run", side_effect=FileNotFoundError(2, "No such file or directory"))
    with pytest.raises(SlurmError, match="cannot run: No such file or directory"):
        subprocess_runner()(["/nope/scontrol", "ping"])


# ---- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, version", [
    ("22.05.8", (22, 5, 8)), ("23.02", (23, 2, 0)), ("23.11.10", (23, 11, 10)), ("24.11.5-1", (24, 11, 5)),
    ("25.05.0-0rc1", (25, 5, 0)), (" 26.05.3\n", (26, 5, 3)),
])
def test_parse_version(text, version):
    """Slurm versions become tuples that compare as versions do; a packager's suffix is ignored."""
    assert parse_version(text) == version


def test_versions_compare_as_tuples():
    """23.02 < 23.11 < 24.05 < 24.11 < 26.05, which string comparison would get right only by luck."""
    ordered = ["22.05.8", "23.02.0", "23.11.0", "24.05.1", "24.11.5", "26.05.3"]
    assert sorted(ordered, key=parse_version) == ordered and parse_version("23.2") == parse_version("23.02")


@pytest.mark.parametrize("text", ["", "24", "24.x", "latest", "24.11.5.6", "v24.11", "(null)"])
def test_parse_version_refuses_what_is_not_a_version(text):
    """Anything else is a UsageError naming the text."""
    with pytest.raises(UsageError, match="is not a Slurm version"):
        parse_version(text)


def test_version_text_and_config_version():
    """Versions print as Slurm writes them; SLURM_VERSION of show config is read, a bad one is a SlurmError."""
    assert version_text((23, 2, 0)) == "23.02" and version_text((24, 11, 5)) == "24.11.5"
    assert version_of_config({"SLURM_VERSION": "24.11.5"}) == (24, 11, 5)
    with pytest.raises(SlurmError, match="no SLURM_VERSION"):
        version_of_config({})
    with pytest.raises(SlurmError, match="'x' is not a Slurm version"):
        version_of_config({"SLURM_VERSION": "x"})


def test_slurm_version_and_client_version():
    """version() asks slurmctld (show config); client_version() only the installed scontrol (--version)."""
    run = FakeRunner("SLURM_VERSION           = 24.11.5\n", "slurm 24.11.5\n", "something else\n")
    slurm = Slurm(run, scontrol=SCONTROL)
    assert slurm.version() == (24, 11, 5) and slurm.client_version() == (24, 11, 5)
    with pytest.raises(SlurmError, match="cannot read a version"):
        slurm.client_version()
    assert run.calls == [[SCONTROL, "show", "config"], [SCONTROL, "--version"], [SCONTROL, "--version"]]


# ---- find_command -----------------------------------------------------------------------------


def _executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_command_configured_path(tmp_path):
    """A configured executable path is used as given."""
    program = _executable(tmp_path / "scontrol")
    assert find_command("scontrol", str(program)) == str(program)


def test_find_command_configured_not_executable(tmp_path):
    """A configured path that is not an executable file is a SlurmError naming it."""
    (tmp_path / "scontrol").write_text("")
    with pytest.raises(SlurmError, match="is not an executable file"):
        find_command("scontrol", str(tmp_path / "scontrol"))


def test_find_command_searches_path(tmp_path, monkeypatch):
    """Without a configured path the command is looked up on PATH."""
    program = _executable(tmp_path / "scontrol")
    monkeypatch.setenv("PATH", f"/nonexistent{os.pathsep}{tmp_path}")
    assert find_command("scontrol") == str(program)


def test_find_command_without_path_uses_system_dirs(mocker, monkeypatch):
    """With no PATH at all (as under slurmctld), the usual sbin/bin directories are searched."""
    monkeypatch.delenv("PATH", raising=False)
    which = mocker.patch("elastic.slurm.shutil.which", return_value="/usr/sbin/scontrol")
    assert find_command("scontrol") == "/usr/sbin/scontrol"
    which.assert_called_once_with("scontrol", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


def test_find_command_not_found(tmp_path, monkeypatch):
    """A command on no directory of PATH is a SlurmError."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="scontrol: not found in"):
        find_command("scontrol")


# ---- jobs by node -------------------------------------------------------------------------------

SHOW_JOB = (
    "JobId=12 JobName=mpi UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A Priority=4294901756 Nice=0 "
    "Account=(null) QOS=(null) JobState=CONFIGURING Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:04 TimeLimit=UNLIMITED NodeList=cpu-[001-003] "
    "BatchHost=cpu-001 NumNodes=3 NumCPUs=3 ReqNodeList=(null) ExcNodeList=cpu-004 Command=/tmp/a b.sh\n"
    "JobId=13 JobName=wait UserId=bob(1001) JobState=PENDING Reason=Resources NodeList=(null) "
    "ReqNodeList=cpu-004\n"
    "JobId=11 JobName=old UserId=bob(1001) JobState=COMPLETED Reason=None NodeList=cpu-004\n"
    "JobId=14 JobName=shared UserId=bob(1001) JobState=RUNNING Reason=None NodeList=cpu-003\n"
)


def test_jobs_by_node_reads_node_lists_of_jobs_holding_nodes():
    """Configuring and running jobs give their nodes; pending and finished jobs, and ReqNodeList, do not."""
    runner = FakeRunner(SHOW_JOB)
    jobs = Slurm(runner, scontrol="/usr/bin/scontrol").jobs_by_node()
    assert runner.calls == [["/usr/bin/scontrol", "-o", "show", "job"]]
    assert jobs == {"cpu-001": [12], "cpu-002": [12], "cpu-003": [12, 14]}


def test_jobs_by_node_with_no_jobs():
    """`No jobs in the system` is no job, not an error."""
    assert Slurm(FakeRunner("No jobs in the system\n")).jobs_by_node() == {}
