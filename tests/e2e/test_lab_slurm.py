"""The local Slurm test bed (elastic.lab.slurm) against Debian's real munged, slurmctld and slurmd
(this machine's 22.05, or with --slurm 24.11 / 26.05 those of a Debian 13 / sid root).

These tests also pin down the contract slurmctld gives power-save programs, per version, with
stand-in programs that record how they were run (see conftest.Recorder).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from elastic.lab.slurm import LocalSlurm, LocalSlurmError
from elastic.lab.slurm.procs import descendants, pid_alive, session_members

pytestmark = pytest.mark.e2e

CLOUD_NODES = ["NodeName=c-[1-2] CPUs=1 RealMemory=1000 State=CLOUD Feature=cloud"]
CLOUD_PARTITION = ["PartitionName=cloud Nodes=c-[1-2] Default=YES State=UP MaxTime=10"]


def submit(s: LocalSlurm, *args: str) -> int:
    out = s.run("sbatch", "--parsable", f"--output={s.workdir}/job-%j.out", *args)
    return int(out.strip().split(";")[0])


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s"
        time.sleep(0.05)


def powered_down(state: str) -> bool:
    return "POWERED_DOWN" in state and "POWERING" not in state


def test_batch_job_on_normal_nodes(local_slurm):
    """Non-cloud nodes each get a port and a slurmd; a batch job completes; stop() leaves no pid."""
    s = local_slurm(node_lines=["NodeName=n-[1-2] CPUs=1 RealMemory=1000"],
                    partition_lines=["PartitionName=p Nodes=n-[1-2] Default=YES State=UP MaxTime=10"])
    assert s.node_port("n-1") != s.node_port("n-2")
    for name in ("n-1", "n-2"):
        s.start_slurmd(name)
        s.start_slurmd(name)  # idempotent
        assert s.slurmd_running(name)
        s.wait_node_state(name, lambda st: st.startswith("IDLE"), 20)

    job = submit(s, "-w", "n-2", "--wrap", "hostname")

    assert s.wait_job(job, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
    assert (s.workdir / f"job-{job}.out").read_text().strip() == socket.gethostname()
    pids = s.started_pids()
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)  # munged, slurmctld, 2 slurmds
    s.stop()
    assert s.running_pids() == [] and not any(pid_alive(p) for p in pids)


def test_stop_slurmd_ends_the_nodes_jobs(local_slurm):
    """stop_slurmd, like deleting a VM, ends the slurmd and every process of its running job."""
    s = local_slurm(node_lines=["NodeName=n-1 CPUs=1 RealMemory=1000"],
                    partition_lines=["PartitionName=p Nodes=n-1 Default=YES State=UP MaxTime=10"])
    s.start_slurmd("n-1")
    s.wait_node_state("n-1", lambda st: st.startswith("IDLE"), 20)
    pid_file = s.workdir / "job.pid"
    job = submit(s, "--wrap", f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && sleep 300")
    s.wait_job(job, {"RUNNING"}, 20)
    wait_for(pid_file.exists, 10)
    # slurmstepd, the batch shell and its sleep: one session, not below slurmd (see stop_slurmd). The
    # shell forks the sleep just after it writes the pid file: on a loaded machine, a moment later.
    wait_for(lambda: len(session_members({int(pid_file.read_text())})) >= 3, 10)
    job_procs = session_members({int(pid_file.read_text())})
    assert len(job_procs) >= 3 and not job_procs & descendants(s.slurmds["n-1"].pid)

    s.stop_slurmd("n-1")
    s.stop_slurmd("n-1")  # idempotent

    assert not s.slurmd_running("n-1")
    assert not any(pid_alive(p) for p in job_procs)


SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def test_resume_program_contract_and_prompt_job_start(local_slurm, recorder, tmp_path):
    """ResumeProgram gets the hostlist, only SLURM_CONF+SLURM_RESUME_FILE, fds 0-2 closed (22.05) or
    /dev/null and pipes (23.02+, under slurmscriptd); the job starts at once."""
    resume = recorder(tmp_path, "resume",
                      after='/usr/bin/scontrol update nodename="$1" nodeaddr=127.10.0.5')
    suspend = recorder(tmp_path, "suspend")
    s = local_slurm(node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION,
                    resume_program=str(resume.path), suspend_program=str(suspend.path),
                    power_save={"SuspendTime": 300, "ResumeTimeout": 60}, elastic_yaml="cluster: lab\n")
    assert powered_down(s.node_state("c-1"))  # visible at all: PrivateData=cloud on 22.05, always from 23.02

    job = submit(s, "--wrap", "hostname")
    [call] = resume.wait_calls(1)

    assert call["argv"] == ["c-1"]
    assert set(call["env"]) == {"SLURM_CONF", "SLURM_RESUME_FILE"}
    assert call["env"]["SLURM_CONF"] == str(s.conf_path)
    assert call["elastic_yaml"], "elastic.yaml lies beside SLURM_CONF"
    resume_file = json.loads(call["resume_file"])
    if s.version < (23, 2):
        assert call["fds"] == "closed,closed,closed"
        # slurmctld's own blocked signals (SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE, ...) stay
        # blocked in the program and in whatever it starts.
        assert int(call["sigblk"], 16) & SIGTERM_BIT
        assert resume_file == {"jobs": [{"job_id": job, "nodes": "c-1"}], "all_nodes": "c-1"}
    else:
        # Run by slurmscriptd: stdin /dev/null, stdout and stderr one pipe it reads, nothing blocked.
        assert call["fds"] == "open,open,open"
        fd0, fd1, fd2 = call["fd_targets"]
        assert fd0 == "/dev/null" and fd1.startswith("pipe:") and fd2 == fd1
        assert int(call["sigblk"], 16) == 0
        [job_entry] = resume_file["jobs"]
        assert resume_file["all_nodes_resume"] == "c-1"
        wanted = {"job_id": job, "nodes_alloc": "c-1", "nodes_resume": "c-1", "partition": "cloud"}
        assert wanted.items() <= job_entry.items()
        expected_keys = {"job_id", "nodes_alloc", "nodes_resume", "partition", "features", "reservation",
                         "oversubscribe", "extra"}
        if s.version >= (26, 5):
            expected_keys |= {"exclusive", "priority"}
        assert expected_keys <= set(job_entry), sorted(job_entry)
    assert call["cwd"] == s.inside(s.workdir)  # slurmctld's own, inherited
    assert call["uid"] == 0
    assert "POWERING_UP" in s.node_state("c-1")
    assert s.node_fields("c-1")["NodeAddr"] == "127.10.0.5"

    s.start_slurmd("c-1")
    # The prolog-slurmctld hook launches it as soon as c-1 registers: well before the 30 s pass.
    assert s.wait_job(job, {"COMPLETED", "FAILED"}, 15) == "COMPLETED"
    assert s.node_state("c-1") == "IDLE+CLOUD"
    assert suspend.calls() == []
    # From 23.11 registration replaces NodeAddr with the address slurmd connected from.
    assert s.node_fields("c-1")["NodeAddr"] == ("127.10.0.5" if s.version < (23, 11) else "127.0.0.1")


def test_suspend_program_runs_after_suspend_time(local_slurm, recorder, tmp_path):
    """An idle cloud node gets the SuspendProgram after SuspendTime, then is POWERED_DOWN again."""
    resume = recorder(tmp_path, "resume", after='/usr/bin/scontrol update nodename="$1" nodeaddr=127.0.0.1')
    suspend = recorder(tmp_path, "suspend")
    s = local_slurm(node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION,
                    resume_program=str(resume.path), suspend_program=str(suspend.path),
                    power_save={"SuspendTime": 2, "SuspendTimeout": 2, "ResumeTimeout": 60})
    s.run("scontrol", "update", "nodename=c-2", "state=power_up")
    [call] = resume.wait_calls(1)
    assert call["argv"] == ["c-2"] and json.loads(call["resume_file"])["jobs"] == []
    s.start_slurmd("c-2")
    s.wait_node_state("c-2", lambda st: st == "IDLE+CLOUD", 15)

    [call] = suspend.wait_calls(1, timeout=15)

    assert call["argv"] == ["c-2"]
    assert set(call["env"]) == {"SLURM_CONF"}
    s.stop_slurmd("c-2")
    s.wait_node_state("c-2", powered_down, 15)


def test_slurm_user_runs_programs_as_that_user(local_slurm, recorder, shared_dir):
    """With slurm_user="slurm", slurmctld runs as slurm and so do the programs it starts."""
    resume = recorder(shared_dir, "resume", after='/usr/bin/scontrol update nodename="$1" nodeaddr=127.0.0.1')
    suspend = recorder(shared_dir, "suspend")
    s = local_slurm(shared_dir / "w", slurm_user="slurm", node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION,
                    resume_program=str(resume.path), suspend_program=str(suspend.path))
    slurm_uid, _ = s.install.user_ids("slurm")
    assert _uid(s.slurmctld.pid) == slurm_uid

    job = submit(s, "--wrap", "id -u")
    [call] = resume.wait_calls(1)
    assert call["uid"] == slurm_uid
    s.start_slurmd("c-1")

    assert s.wait_job(job, {"COMPLETED", "FAILED"}, 15) == "COMPLETED"
    assert (s.workdir / f"job-{job}.out").read_text().strip() == "0"  # jobs run as their submitter


def test_slurm_user_must_reach_the_programs(tmp_path, shared_dir, recorder):
    """A program SlurmUser cannot execute (below a 0700 dir, like /root) is refused before any daemon starts."""
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    resume = recorder(private, "resume")
    suspend = recorder(private, "suspend")
    s = LocalSlurm(shared_dir / "w", slurm_user="slurm", node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION,
                   resume_program=str(resume.path), suspend_program=str(suspend.path))

    with pytest.raises(LocalSlurmError, match="SlurmUser slurm cannot execute program"):
        s.start()
    assert s.started_pids() == []


def test_stop_ends_power_save_programs_still_running(local_slurm, recorder, tmp_path):
    """stop() also kills a ResumeProgram still running, and its children (slurmctld never does)."""
    child_pid = tmp_path / "child.pid"
    resume = recorder(tmp_path, "resume", after=f"/usr/bin/sleep 300 & echo $! > {child_pid}; wait")
    suspend = recorder(tmp_path, "suspend")
    s = local_slurm(node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION,
                    resume_program=str(resume.path), suspend_program=str(suspend.path))
    s.run("scontrol", "update", "nodename=c-1", "state=power_up")
    [call] = resume.wait_calls(1)
    wait_for(lambda: child_pid.exists() and child_pid.read_text().strip(), 10)
    pids = {call["pid"], int(child_pid.read_text())}
    assert all(pid_alive(p) for p in pids)

    s.stop()

    assert not any(pid_alive(p) for p in pids)


def test_power_save_needs_both_programs(tmp_path, recorder):
    """Only a ResumeProgram (slurmctld would silently disable power saving) is refused up front."""
    resume = recorder(tmp_path, "resume")
    with pytest.raises(ValueError, match="both resume_program and suspend_program"):
        LocalSlurm(tmp_path / "w", node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION,
                   resume_program=str(resume.path))


def test_reconfigure_with_new_nodes_restarts_slurmctld(local_slurm):
    """reconfigure() with a new node restarts slurmctld on its state: old jobs and slurmds stay."""
    s = local_slurm(node_lines=["NodeName=n-1 CPUs=1 RealMemory=1000"],
                    partition_lines=["PartitionName=p Nodes=n-1 Default=YES State=UP MaxTime=10"])
    s.start_slurmd("n-1")
    s.wait_node_state("n-1", lambda st: st.startswith("IDLE"), 20)
    job = submit(s, "--wrap", "true")
    s.wait_job(job, {"COMPLETED"}, 20)
    first_ctld = s.slurmctld.pid
    port = s.node_port("n-1")

    s.reconfigure(node_lines=["NodeName=n-[1-2] CPUs=1 RealMemory=1000"],
                  partition_lines=["PartitionName=p Nodes=n-[1-2] Default=YES State=UP MaxTime=10"])

    assert s.slurmctld.pid != first_ctld and not pid_alive(first_ctld)
    assert s.node_port("n-1") == port
    assert s.job_fields(job)["JobState"] == "COMPLETED"
    s.start_slurmd("n-2")
    s.wait_node_state("n-2", lambda st: st.startswith("IDLE"), 20)
    assert s.node_state("n-1").startswith("IDLE"), "reconfigure() waits for running slurmds to register again"


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_environment_for_commands_drops_outer_slurm_variables(tmp_path, monkeypatch):
    """s.env points at this cluster and drops SLURM_* from an outer Slurm job (no daemon started)."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    s = LocalSlurm(tmp_path, node_lines=[], partition_lines=[])
    assert s.env["SLURM_CONF"] == str(tmp_path.resolve() / "etc" / "slurm.conf")
    assert "SLURM_JOB_ID" not in s.env and os.environ["SLURM_JOB_ID"] == "77"


def test_cloud_reg_addrs_takes_the_address_from_registration(local_slurm, recorder, tmp_path):
    """With cloud_reg_addrs=True a ResumeProgram need not set NodeAddr: slurmd's registration does."""
    resume = recorder(tmp_path, "resume")
    suspend = recorder(tmp_path, "suspend")
    s = local_slurm(node_lines=CLOUD_NODES, partition_lines=CLOUD_PARTITION, cloud_reg_addrs=True,
                    resume_program=str(resume.path), suspend_program=str(suspend.path))
    job = submit(s, "--wrap", "true")
    resume.wait_calls(1)
    s.start_slurmd("c-1")

    assert s.wait_job(job, {"COMPLETED", "FAILED"}, 15) == "COMPLETED"
    assert s.node_fields("c-1")["NodeAddr"] == "127.0.0.1"


@pytest.mark.parametrize("version, kept, dropped, cgroup", [
    ((22, 5, 8), ["PrivateData=cloud", "TreeWidth=65533", "CommunicationParameters=NoAddrCache", "cloud_reg_addrs"], [],
     None),
    ((23, 2, 7), ["TreeWidth=65533", "CommunicationParameters=NoAddrCache", "cloud_reg_addrs"], ["PrivateData"], None),
    ((24, 11, 5), [], ["PrivateData", "TreeWidth", "NoAddrCache", "cloud_reg_addrs"], "CgroupPlugin=disabled"),
    ((26, 5, 5), [], ["PrivateData", "TreeWidth", "NoAddrCache", "cloud_reg_addrs"], "CgroupPlugin=disabled"),
])
def test_slurm_conf_is_written_for_the_version_that_runs(tmp_path, version, kept, dropped, cgroup):
    """No option a release dropped or no longer needs; cgroup.conf only where slurmd needs it (no daemon started)."""
    from elastic.lab.slurm.cluster_conf import Layout, Ports, Programs, render_cgroup_conf, render_conf

    text = render_conf(Layout(tmp_path), Ports(ctld=6817), [], [], programs=Programs(), power_save={},
                       slurm_user="root", cloud_reg_addrs=True, prompt_launch=False, extra_conf=[], version=version)
    assert all(option in text for option in kept)
    assert not [option for option in dropped if option in text]
    assert "power_save_interval=1" in text
    written = render_cgroup_conf(version)
    assert (written is None) if cgroup is None else (cgroup in written.splitlines())
