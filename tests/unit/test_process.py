"""Repairing the process slurmctld hands us: closed standard fds, blocked signals, no PATH."""

from __future__ import annotations

import os
import resource
import signal
import stat

import pytest

from elastic import process


@pytest.fixture(autouse=True)
def restore_open_file_limit():
    """repair_process raises the soft open-file limit: give the test process its own back."""
    saved, setrlimit = resource.getrlimit(resource.RLIMIT_NOFILE), resource.setrlimit  # a test may patch it
    yield
    setrlimit(resource.RLIMIT_NOFILE, saved)


def test_repair_unblocks_signals_inherited_from_slurmctld(monkeypatch):
    """Signals slurmctld had blocked (SIGTERM, SIGCHLD, ...) are unblocked again."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE])
    try:
        process.repair_process()
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_repair_sets_a_path_when_there_is_none(monkeypatch):
    """Without PATH (as under slurmctld) a standard one is set; an existing PATH is kept."""
    monkeypatch.delenv("PATH", raising=False)
    process.repair_process()
    assert os.environ["PATH"] == process.DEFAULT_PATH
    monkeypatch.setenv("PATH", "/opt/x")
    process.repair_process()
    assert os.environ["PATH"] == "/opt/x"


def test_repair_reopens_a_closed_standard_fd(monkeypatch):
    """A closed fd 0 is reopened on /dev/null, so the next open() does not land on it."""
    saved = os.dup(0)
    monkeypatch.setattr(process, "_closed_at_start", set())
    monkeypatch.setattr(process, "_to_log", set())
    monkeypatch.setattr(process, "output_lost", lambda fd: False)  # fds 1 and 2 as at a terminal
    try:
        os.close(0)
        process.repair_process()
        assert os.path.samefile("/proc/self/fd/0", os.devnull)
        assert process._closed_at_start == {0}
        assert not process.started_detached()
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_raise_open_file_limit_lifts_soft_to_hard():
    """The soft RLIMIT_NOFILE is raised to the hard limit, and the new soft limit is returned."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    assert process.raise_open_file_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_raise_open_file_limit_never_fails(monkeypatch):
    """When setrlimit refuses, the old soft limit stays and is returned; no exception escapes."""
    def refuse(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(process.resource, "getrlimit", lambda which: (1024, 4096))
    monkeypatch.setattr(process.resource, "setrlimit", refuse)
    assert process.raise_open_file_limit() == 1024


def test_raise_open_file_limit_with_infinite_hard_limit_uses_nr_open(monkeypatch):
    """An infinite hard limit (refused by Linux for NOFILE) is taken as fs.nr_open."""
    calls = []
    monkeypatch.setattr(process.resource, "getrlimit", lambda which: (1024, resource.RLIM_INFINITY))
    monkeypatch.setattr(process.resource, "setrlimit", lambda which, limits: calls.append(limits))
    monkeypatch.setattr(process, "_nr_open", lambda: 1048576)
    assert process.raise_open_file_limit() == 1048576
    assert calls == [(1048576, resource.RLIM_INFINITY)]


def test_repair_raises_the_open_file_limit():
    """repair_process lifts the soft open-file limit, since a flow holds one lock file per node."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    process.repair_process()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard


def _detached_output(monkeypatch, log_file):
    """Run send_output_to as if slurmctld had closed fd 2, with fd 2 saved and restored around it."""
    saved = os.dup(2)
    monkeypatch.setattr(process, "_closed_at_start", {2})
    monkeypatch.setattr(process, "_to_log", {2})
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        process.send_output_to(log_file)
        os.write(2, b"to fd 2\n")
        return os.readlink("/proc/self/fd/2")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def test_send_output_to_points_closed_fds_at_the_log(tmp_path, monkeypatch):
    """A closed fd 2 is pointed at the log file, created 0640 in a directory created 0750."""
    log_file = tmp_path / "log" / "elastic.log"
    old = os.umask(0o022)
    try:
        target = _detached_output(monkeypatch, log_file)
    finally:
        os.umask(old)
    assert target == str(log_file) and log_file.read_text() == "to fd 2\n"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o750


def test_send_output_to_does_not_follow_a_symlink(tmp_path, monkeypatch):
    """A symlink at the log path is not followed: fd 2 stays on /dev/null and the target is not created."""
    log_file, victim = tmp_path / "elastic.log", tmp_path / "victim"
    log_file.symlink_to(victim)
    assert _detached_output(monkeypatch, log_file) == os.devnull
    assert not victim.exists()


# ---- stdout and stderr nobody reads go to the log ----------------------------------------------


def test_output_lost_for_pipes_and_devnull_but_not_terminals_files_or_sockets(tmp_path):
    """A pipe (slurmscriptd's, 23.02+) and /dev/null (22.05's closed fds, reopened) lose output;
    a terminal, a regular file and a socket (journald) keep it."""
    import socket

    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    leader, follower = os.openpty()
    regular = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    one, other = socket.socketpair()
    try:
        assert process.output_lost(write_end) and process.output_lost(null)
        assert not process.output_lost(follower) and not process.output_lost(regular)
        assert not process.output_lost(one.fileno())
        assert process.output_lost(999)  # not open at all
    finally:
        for fd in (read_end, write_end, null, leader, follower, regular):
            os.close(fd)
        one.close()
        other.close()


def test_a_terminal_and_a_file_are_left_alone(tmp_path, monkeypatch):
    """Run by hand at a terminal (or with output to a file), nothing goes to the log."""
    saved = os.dup(1), os.dup(2)
    leader, follower = os.openpty()
    regular = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(process, "_closed_at_start", set())
    monkeypatch.setattr(process, "_to_log", set())
    try:
        os.dup2(follower, 1)
        os.dup2(regular, 2)
        process.repair_process()
        assert process._to_log == set() and not process.started_detached()
        process.send_output_to(tmp_path / "elastic.log")
        assert not (tmp_path / "elastic.log").exists()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, leader, follower, regular):
            os.close(fd)


def _run_forked(child) -> int:
    """Run `child()` in a forked copy of this process (unit tests start no programs) and return its
    exit status; whatever it raises, the copy ends with os._exit and never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            child()
        except BaseException:  # noqa: BLE001 - the copy must never unwind into pytest
            status = 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("stdin_null", [True, False], ids=["23.02+ pipes", "22.05 closed"])
def test_a_traceback_reaches_the_log_under_slurmscriptd_and_under_22_05(tmp_path, stdin_null):
    """As under slurmscriptd (stdin /dev/null, stdout and stderr one pipe) or under 22.05 (fds 0-2
    closed), a program's print and traceback after send_output_to land in the log file, and
    slurmscriptd's end of the pipe sees it closed (so it waits for the exit, not for output)."""
    log_file = tmp_path / "log" / "elastic.log"
    read_end, write_end = os.pipe()

    def child():
        import sys

        os.close(read_end)
        if stdin_null:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.close(null)
        else:
            for fd in (0, 1, 2):
                os.close(fd)
        os.close(write_end)
        process._closed_at_start.clear()
        process._to_log.clear()
        sys.stdout = sys.stderr = None  # as for a Python started with them closed; pytest's own are gone
        process.repair_process()
        assert process.started_detached()
        process.send_output_to(log_file)
        print("a line on stdout", flush=True)
        try:
            raise RuntimeError("a bug of ours")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        sys.stderr.flush()

    try:
        assert _run_forked(child) == 0
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 4096) == b""  # nothing went to slurmscriptd's pipe, and it is closed
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    text = log_file.read_text()
    assert "a line on stdout" in text and "RuntimeError: a bug of ours" in text and "Traceback" in text


def test_exit_now_flushes_then_ends_the_process_with_the_code(monkeypatch, capsys):
    """What was printed is flushed before os._exit, which gets the run's exit code."""
    import logging
    import sys

    ended: list[int] = []
    shut: list[bool] = []

    class Ended(Exception):
        pass

    def fake_exit(code: int) -> None:
        ended.append(code)
        raise Ended

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(logging, "shutdown", lambda: shut.append(True))
    print("last words", end="")
    sys.stdout.write("")
    with pytest.raises(Ended):
        process.exit_now(1)
    assert ended == [1] and shut == [True]
    assert capsys.readouterr().out == "last words"


def test_the_collector_is_off_during_start_up_then_what_start_up_made_is_frozen():
    """pause_gc turns the collector off (only if it was on); resume_gc freezes what exists and turns
    it back on, once; an entry point that returns early (a config error) still turns it back on."""
    import gc

    from elastic import cli

    assert gc.isenabled()
    process.pause_gc()
    assert not gc.isenabled()
    process.resume_gc()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.unfreeze()
    process.resume_gc()
    assert gc.get_freeze_count() == 0
    gc.disable()
    try:
        process.pause_gc()
        process.resume_gc()
        assert not gc.isenabled()  # someone else turned it off: theirs to turn back on
    finally:
        gc.enable()
    assert cli.suspend_main(["cpu-001", "--config", "/nonexistent/elastic.yaml"]) == 2
    assert gc.isenabled()
