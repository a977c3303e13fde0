"""Per-node locks between elastic processes (filelock, flock(2) on `<lock_dir>/<node>.lock`).

slurmctld puts no cap on concurrent programs: two resumes of one node, or a suspend of a node
whose resume still runs, really happen. A flow holds its nodes' locks while it looks for and
creates (or deletes) their servers, so the second process sees what the first one made.

The power flows take the locks that are free (`free_node_locks`) and serve those nodes at once; a
node whose lock another run holds waits for that run, not the whole batch with it: a resume of
1,000 nodes is not held up by one node a slow suspend is deleting, and a cloud's fault that keeps
one run busy with its nodes reaches no other node.

Node locks are flock(2) on file descriptors we open ourselves: filelock costs about 0.3 ms a lock
(its instance registry and fork tracking), 3 s for the 10,000 nodes of a large resume-fail, where a
bare flock costs 8 microseconds. The single exclusive locks (reconcile, history) use filelock.

Every fault of this machine (a lock file we may not open, a symlink planted where a lock file
should be, too many open files, a full or read-only disk) is a LocalError naming the file: the
flows fail closed on it. Lock files are opened with O_NOFOLLOW (filelock's UnixFileLock does) and
created 0640 in a lock dir created 0750.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import resource
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import filelock

from elastic.errors import LocalError, LockTimeout, UsageError

LOCK_FILE_MODE = 0o640
LOCK_DIR_MODE = 0o750
# Open files a flow needs besides its node locks: the log, Python's own, openstacksdk's sockets,
# pipes to scontrol, the history file.
SPARE_OPEN_FILES = 256


@contextlib.contextmanager
def node_locks(lock_dir: Path, names: Iterable[str], *, timeout: float) -> Iterator[None]:
    """Hold one lock per node for the `with` body; raise LockTimeout naming the node we waited for.

    Locks are taken in sorted order so two processes wanting overlapping sets cannot deadlock;
    every lock taken is released on exit, on an exception and when a later lock times out.
    A name that cannot name a file is a UsageError; a set of nodes whose locks (one open file each,
    held for the whole body) would not fit under the open-file limit is a LocalError before any
    lock is taken.
    """
    wanted = sorted(set(names))
    for name in wanted:
        check_node_name(name)
    _check_open_file_limit(len(wanted))
    _make_dir(Path(lock_dir))
    # Real time, not an injected clock: the wait is for another process to let go, which a fake
    # clock cannot hasten (and whose sleep would spin); tests pass short timeouts instead.
    deadline = time.monotonic() + timeout
    held: list[int] = []
    try:
        for name in wanted:
            held.append(_flock(Path(lock_dir) / f"{name}.lock", deadline, timeout, f"node {name}"))
        yield
    finally:
        for fd in reversed(held):
            os.close(fd)  # closing the only descriptor releases the flock


@contextlib.contextmanager
def free_node_locks(lock_dir: Path, names: Iterable[str]) -> Iterator[frozenset[str]]:
    """Hold the locks of those of `names` no other process holds; yield their names.

    Never waits, so no order is needed against deadlock. The same errors as node_locks.
    """
    wanted = sorted(set(names))
    for name in wanted:
        check_node_name(name)
    _check_open_file_limit(len(wanted))
    _make_dir(Path(lock_dir))
    held: dict[str, int] = {}
    try:
        for name in wanted:
            fd = _try_flock(Path(lock_dir) / f"{name}.lock")
            if fd is not None:
                held[name] = fd
        yield frozenset(held)
    finally:
        for fd in held.values():
            os.close(fd)


def _try_flock(path: Path) -> int | None:
    """An open descriptor of `path` holding an exclusive flock, or None when another holds it."""
    try:
        return _flock(path, deadline=-math.inf, timeout=0, what="")
    except LockTimeout:
        return None


def _flock(path: Path, deadline: float, timeout: float, what: str) -> int:
    """An open descriptor of `path` holding an exclusive flock; waits until `deadline`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_FILE_MODE)
    except OSError as exc:
        raise LocalError(f"cannot open or lock {path}: {_strerror(exc)}{_hint(exc)}") from None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{what}: lock {path} still held by another elastic process after "
                                      f"{timeout:g}s") from None
                time.sleep(_POLL_SECONDS)
            except OSError as exc:  # ENOLCK, ENOSYS: a filesystem without flock
                raise LocalError(f"cannot open or lock {path}: {_strerror(exc)}{_hint(exc)}") from None
        if stat.S_IMODE(os.fstat(fd).st_mode) != LOCK_FILE_MODE:
            os.fchmod(fd, LOCK_FILE_MODE)  # a lock file from an older elastic, or a wider umask
    except BaseException:
        os.close(fd)
        raise
    return fd


_POLL_SECONDS = 0.05


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """One process at a time (e.g. `elastic reconcile`); LockTimeout when another holds it."""
    _make_dir(Path(path).parent)
    with _locked(Path(path), timeout, str(path)):
        yield


def check_node_name(name: str) -> None:
    """UsageError unless `name` can be a file name inside the lock dir (no '/', NUL, '', '.', '..')."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise UsageError(f"node name {name!r} cannot name a lock file")


def _check_open_file_limit(count: int) -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + SPARE_OPEN_FILES
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise LocalError(f"locking {count} nodes needs {needed} open files for node locks, the limit is {soft}; "
                         "raise LimitNOFILE for slurmctld")


@contextlib.contextmanager
def _locked(path: Path, timeout: float, what: str) -> Iterator[None]:
    # fallback_to_soft=False: on a filesystem without flock, filelock would silently switch to a
    # lock by file existence, which a crashed run leaves behind; fail instead.
    lock = filelock.FileLock(path, timeout=timeout, mode=LOCK_FILE_MODE, fallback_to_soft=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(f"{what}: lock {path} still held by another elastic process after {timeout:g}s") from None
    except OSError as exc:
        raise LocalError(f"cannot open or lock {path}: {_strerror(exc)}{_hint(exc)}") from None
    try:
        yield
    finally:
        lock.release()


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _hint(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        # Typically a lock file left by an admin's run as root that SlurmUser cannot open.
        return " (created by another user?)"
    if exc.errno == errno.ELOOP:
        return " (the lock file is a symlink; remove it)"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return " (raise LimitNOFILE for slurmctld)"
    return ""


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=LOCK_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalError(f"cannot create lock directory {directory}: {_strerror(exc)}") from None
