"""Foreground daemons as child processes, ended by the pid each was started with."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TERM_GRACE = 10.0  # seconds from SIGTERM to SIGKILL
KILL_WAIT = 5.0


@dataclass
class Daemon:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> Daemon:
    """Start `argv` in its own session, stdin from /dev/null, stdout and stderr to `log`.

    As on a freshly booted VM, the daemon gets no inherited fds, default signal dispositions and
    an empty signal mask. fork copies the *calling thread's* mask and Popen has no option for
    it, so clear it around the fork: the caller may be a thread that blocks signals, or a
    process started by slurmctld, which passes on its blocked SIGTERM, SIGINT, SIGCHLD, ...
    (a slurmd started that way ignores SIGTERM). Its own session lets stop() end its group.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        blocked = signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd, close_fds=True, restore_signals=True,
                                     start_new_session=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return Daemon(name, popen, log)


def stop(daemon: Daemon, grace: float = TERM_GRACE) -> None:
    """End a daemon and what it started: SIGTERM, SIGKILL after `grace`, wait for exit.

    slurmctld 22.05 starts each Resume/Suspend program in a process group of its own
    (setpgid(0, 0)) and, told to stop, waits up to 10 s for them before killing them. So the
    groups of its descendants get SIGKILL first (the test bed is going away), then the daemon
    its SIGTERM; last, whatever is left in its own group (slurmctld's slurmscriptd).
    """
    others = {_pgid(pid) for pid in descendants(daemon.pid)} - {daemon.pid, 0, os.getpgid(0)}
    for pgid in others:
        _killpg(pgid)
    if daemon.alive():
        _signal(daemon.pid, signal.SIGTERM)
        try:
            daemon.popen.wait(grace)
        except subprocess.TimeoutExpired:
            _signal(daemon.pid, signal.SIGKILL)
            daemon.popen.wait(KILL_WAIT)
    else:
        daemon.popen.wait()
    _killpg(daemon.pid)
    _wait_gone(others | {daemon.pid})


def holders(path: Path) -> set[int]:
    """Processes with `path` open (from /proc/*/fd)."""
    target = str(path)
    found = set()
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def session_members(pids: set[int]) -> set[int]:
    """Every live process in the sessions of `pids` (a slurmstepd and its job's tasks share one)."""
    sids = {_sid(pid) for pid in pids} - {0, os.getsid(0)}
    return {pid for pid in _pids() if _sid(pid) in sids and pid_alive(pid)}


def kill_all(pids: set[int], timeout: float = KILL_WAIT) -> None:
    """SIGKILL these processes (not our children: poll /proc until they are gone or zombies)."""
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def descendants(pid: int) -> set[int]:
    """All processes below `pid`, from /proc (children of children included)."""
    children: dict[int, list[int]] = {}
    for child in _pids():
        ppid = _ppid(child)
        if ppid:
            children.setdefault(ppid, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may contain spaces and parentheses: split after the last ")".
            return f.read().rpartition(")")[2].split()
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _ppid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def _pgid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else 0


def _sid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pgids: set[int], timeout: float = KILL_WAIT) -> None:
    """Wait until no process of these groups is left (they are not our children: poll /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_pgid(pid) in pgids and pid_alive(pid) for pid in _pids()):
            return
        time.sleep(0.05)
