"""The programs' entry points: usage and config errors exit 2 with one line, before any side effect."""

from __future__ import annotations

import pytest

from elastic import cli

from tests.support.configs import BAD


@pytest.mark.parametrize("text", [b[1] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.parametrize("entry", [cli.resume_main, cli.suspend_main, cli.resume_fail_main],
                         ids=["resume", "suspend", "resume-fail"])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, text, entry):
    """Every malformed config makes each program print one 'file:line: key: problem' line and exit 2."""
    path = tmp_path / "elastic.yaml"
    path.write_text(text)
    assert entry(["cpu-001", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"elastic: error: {path}:")


def test_malformed_hostlist_exits_2(tmp_path, capsys):
    """A hostlist that does not parse is a usage error: exit 2, one line naming it."""
    from tests.support.configs import GOOD

    path = tmp_path / "elastic.yaml"
    path.write_text(GOOD + f"state_dir: {tmp_path / 'state'}\nlog_file: {tmp_path / 'log'}\n")
    assert cli.suspend_main(["cpu-[001-", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cpu-[001-" in err


def test_missing_hostlist_is_a_usage_error(capsys):
    """Calling a program without a hostlist exits 2 with argparse's usage message."""
    with pytest.raises(SystemExit) as caught:
        cli.resume_main([])
    assert caught.value.code == 2


# ---- failing closed: after the config loads, every node gets an elastic: state whatever breaks ----


@pytest.fixture
def program(tmp_path, monkeypatch):
    """A config (tests.support.power) with real state dir and log, memory clouds and a recording
    Slurm wired in place of the real ones; returns (run(command, hostlist), slurm, config path)."""
    from elastic import wiring
    from elastic.testing import MemoryCloud, RecordingSlurm

    from tests.support.power import CONFIG

    path = tmp_path / "elastic.yaml"
    path.write_text(CONFIG + f"state_dir: {tmp_path / 'state'}\nlog_file: {tmp_path / 'elastic.log'}\n")
    slurm = RecordingSlurm()
    monkeypatch.setattr(wiring, "make_clouds", lambda config, clock, **_: {n: MemoryCloud(n) for n in config.clouds})
    monkeypatch.setattr(wiring, "make_slurm", lambda config: slurm)

    def run(command: str, hostlist: str, config: str | None = None) -> int:
        return cli.run_power(command, hostlist, config or str(path))

    return run, slurm, path


def test_a_node_lock_held_too_long_leaves_that_node_powered_down_with_its_delete_pending(program, tmp_path, capsys):
    """A suspend that cannot get a node's lock within timeouts.lock (another run holds it) serves
    the other nodes at once, and leaves that one as Slurm has it (powered down, no state change),
    its deletes pending for the next run that locks it or reconcile; not a crash, exit 0."""
    import json

    from elastic.locks import node_locks

    run, slurm, path = program
    path.write_text(path.read_text().replace("timeouts: {boot: 60, delete: 30, poll: 5}",
                                             "timeouts: {boot: 60, delete: 30, poll: 5, lock: 0.3}"))
    with node_locks(tmp_path / "state" / "locks", ["cpu-002"], timeout=1):
        assert run("suspend", "cpu-[001-002]") == 0
    assert slurm.states == []
    pending = json.loads((tmp_path / "state" / "history.json").read_text())["pending"]
    assert set(pending) == {"cpu-002"}
    assert {entry["why"] for entry in pending["cpu-002"].values()} == {"suspend: node lock held by another run"}
    err = capsys.readouterr().err
    assert "cpu-001: ok" in err and "cpu-002: delete deferred on" in err and "elastic: local" not in err


def test_a_bug_in_a_flow_fails_every_node_closed_with_an_internal_reason(program, monkeypatch):
    """An exception no flow expected becomes `elastic: internal: <type>` for every node, with the
    traceback in the log; resume's nodes get power_down_force so their jobs are requeued now."""
    from elastic.power import resume as resume_flow

    run, slurm, path = program

    def broken(nodes, services, jobs=()):
        raise KeyError("boom")

    monkeypatch.setattr(resume_flow, "resume", broken)
    assert run("resume", "cpu-001,gpu-1") == 1
    assert slurm.states == [(("cpu-001", "gpu-1"), "power_down_force", "elastic: internal: KeyError: 'boom'")]
    log = (path.parent / "elastic.log").read_text()
    assert "resume.failed_closed" in log and "Traceback" in log


def test_a_state_dir_that_cannot_be_made_is_a_local_failure_not_a_traceback(program, tmp_path):
    """state_dir under a regular file: resume cannot keep locks or history, so every node gets
    power_down_force with `elastic: local: cannot create state_dir`."""
    run, slurm, path = program
    (tmp_path / "blocker").write_text("")
    path.write_text(path.read_text().replace(f"state_dir: {tmp_path / 'state'}",
                                             f"state_dir: {tmp_path / 'blocker' / 'state'}"))
    assert run("resume", "cpu-001") == 1
    ((names, state, reason),) = slurm.states
    assert names == ("cpu-001",) and state == "power_down_force"
    assert reason.startswith("elastic: local: cannot create state_dir")


@pytest.mark.parametrize("hostlist", ["cpu-001,../etc", "a/b", "x[0-99999999]"], ids=["dotdot", "slash", "huge"])
def test_hostlists_no_slurm_would_send_exit_2_and_change_nothing(program, capsys, hostlist):
    """A node name that is a path, or a hostlist naming more nodes than the pools have, is refused
    with one line before any cloud or Slurm call."""
    run, slurm, _ = program
    assert run("suspend", hostlist) == 2
    assert slurm.states == [] and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_full_disk_under_the_log_does_not_stop_the_work(program, tmp_path):
    """With log_file on a device that answers every write with ENOSPC, resume still serves its nodes
    and sends their addresses to Slurm."""
    run, slurm, path = program
    path.write_text(path.read_text().replace(f"log_file: {tmp_path / 'elastic.log'}", "log_file: /dev/full"))
    assert run("resume", "cpu-001,gpu-1") == 0
    assert {node for update in slurm.addresses for node in update} == {"cpu-001", "gpu-1"}


def test_a_resume_file_that_is_not_utf8_is_logged_and_the_nodes_still_served(program, tmp_path, monkeypatch):
    """SLURM_RESUME_FILE with bytes that are not UTF-8 does not stop the resume: a warning is logged
    and the nodes from argv are served."""
    run, slurm, path = program
    bad = tmp_path / "resume.json"
    bad.write_bytes(b'{"jobs": [], "all_nodes": "cpu-001\xff"}')
    monkeypatch.setenv("SLURM_RESUME_FILE", str(bad))
    text, error = cli._read_resume_file_now()
    assert text is None and "is not UTF-8 text (byte 34)" in error
    assert cli.run_power("resume", "cpu-001", str(path), text, error) == 0
    assert "resume.resume_file_unreadable" in (tmp_path / "elastic.log").read_text()
    assert [set(update) for update in slurm.addresses] == [{"cpu-001"}]
