"""Repairing the process slurmctld hands us: closed standard fds, blocked signals, no PATH."""

from __future__ import annotations

import os
import signal

from elastic import process


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
    try:
        os.close(0)
        process.repair_process()
        assert os.path.samefile("/proc/self/fd/0", os.devnull)
        assert process._closed_at_start == {0}
        assert not process.started_detached()
    finally:
        os.dup2(saved, 0)
        os.close(saved)
