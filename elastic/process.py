"""Repair the process slurmctld hands to our programs. Standard library only: it runs first.

slurmctld 22.05 execs ResumeProgram/SuspendProgram/ResumeFailProgram with fds 0, 1 and 2 closed
(so the first open() would get fd 0 and a child writing to stdout fails), an environment holding
only SLURM_CONF (and SLURM_RESUME_FILE), no PATH and no HOME. From 23.02 they run under
slurmscriptd with stdin on /dev/null and output on a pipe that is only logged with
DebugFlags=Script. slurmctld also leaves its blocked-signal mask on us (SIGTERM, SIGINT, SIGHUP,
SIGCHLD, SIGPIPE and more; execve keeps it), and everything we start would inherit it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_closed_at_start: set[int] = set()


def repair_process() -> None:
    """Make fds 0-2 valid (on /dev/null), unblock signals, give the process a PATH. Idempotent."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for fd in (0, 1, 2):
        if _is_closed(fd):
            _closed_at_start.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - wraps fd 0 for the life of the process
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    os.environ.setdefault("PATH", DEFAULT_PATH)


def send_output_to(log_file: Path | None) -> None:
    """Where fds 1 and 2 were closed, point them at the log file, so a traceback or a child's
    output is kept instead of vanishing into /dev/null."""
    if log_file is None or not ({1, 2} & _closed_at_start):
        return
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError:
        return
    for target in sorted({1, 2} & _closed_at_start):
        os.dup2(fd, target)
    os.close(fd)


def started_detached() -> bool:
    """True when slurmctld (22.05) started us with stdout/stderr closed."""
    return bool({1, 2} & _closed_at_start)


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False
