"""Per-node locks between elastic processes (filelock, flock(2) on `<lock_dir>/<node>.lock`).

slurmctld puts no cap on concurrent programs: two resumes of one node, or a suspend of a node
whose resume still runs, really happen. A flow holds its nodes' locks while it looks for and
creates (or deletes) their servers, so the second process sees what the first one made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import filelock

from elastic.errors import ConfigError, LockTimeout


@contextlib.contextmanager
def node_locks(lock_dir: Path, names: Iterable[str], *, timeout: float) -> Iterator[None]:
    """Hold one lock per node for the `with` body; raise LockTimeout naming the node we waited for.

    Locks are taken in sorted order so two processes wanting overlapping sets cannot deadlock;
    every lock taken is released on exit, on an exception and when a later lock times out.
    """
    wanted = sorted(set(names))
    for name in wanted:
        if not name or os.sep in name or name in (".", ".."):
            raise ValueError(f"{name!r} cannot name a lock file")
    _make_dir(Path(lock_dir))
    with contextlib.ExitStack() as held:
        for name in wanted:
            held.enter_context(_locked(Path(lock_dir) / f"{name}.lock", timeout, f"node {name}"))
        yield


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """One process at a time (e.g. `elastic reconcile`); LockTimeout when another holds it."""
    _make_dir(Path(path).parent)
    with _locked(Path(path), timeout, str(path)):
        yield


@contextlib.contextmanager
def _locked(path: Path, timeout: float, what: str) -> Iterator[None]:
    lock = filelock.FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(f"{what}: lock {path} still held by another elastic process after {timeout:g}s") from None
    except PermissionError:
        # Typically a lock file left by an admin's run as root that SlurmUser cannot open.
        raise ConfigError("cannot open the lock file: permission denied (created by another user?)",
                          where=str(path)) from None
    try:
        yield
    finally:
        lock.release()


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create lock directory: {exc.strerror or exc}", where=str(directory)) from None
