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
import resource
import signal
import sys
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_closed_at_start: set[int] = set()


def repair_process() -> None:
    """Make fds 0-2 valid (on /dev/null), unblock signals, give the process a PATH, raise the open-file
    limit. Idempotent."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    raise_open_file_limit()
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


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the soft limit now in effect.

    A flow holds one open lock file per node for its whole run; slurmctld's soft limit (often
    1024) is what we inherit, while its hard limit (systemd's LimitNOFILE) is usually far higher.
    Never fails: when the limit cannot be raised the old one stays.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    targets = [hard]
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite RLIMIT_NOFILE; fs.nr_open is the most it takes.
        targets.insert(0, _nr_open())
    for target in targets:
        if target is None or (soft != resource.RLIM_INFINITY and target != resource.RLIM_INFINITY and target <= soft):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            continue
        return target
    return soft


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def send_output_to(log_file: Path | None) -> None:
    """Where fds 1 and 2 were closed, point them at the log file, so a traceback or a child's
    output is kept instead of vanishing into /dev/null. A symlink at `log_file` is not followed
    (O_NOFOLLOW): the output then stays on /dev/null."""
    if log_file is None or not ({1, 2} & _closed_at_start):
        return
    try:
        log_file.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
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
