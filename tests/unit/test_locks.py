from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import resource
import stat
import threading
from pathlib import Path

import filelock
import pytest

from elastic import locks
from elastic.errors import LocalError, LockTimeout, UsageError
from elastic.locks import exclusive_lock, node_locks


def _free(lock_dir, name) -> bool:
    try:
        with node_locks(lock_dir, [name], timeout=0):
            return True
    except LockTimeout:
        return False


def test_creates_lock_dir_and_one_file_per_node(tmp_path):
    """The lock dir is created 0750 and each <node>.lock 0640 (under slurmctld's umask 022)."""
    lock_dir = tmp_path / "state" / "locks"
    old = os.umask(0o022)
    try:
        with node_locks(lock_dir, ["cpu-002", "cpu-001"], timeout=1):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o750
    assert sorted(p.name for p in lock_dir.iterdir()) == ["cpu-001.lock", "cpu-002.lock"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in lock_dir.iterdir()} == {0o640}


def test_existing_lock_file_mode_is_normalised(tmp_path):
    """A lock file left world-readable by an older version is set to 0640 once we hold it."""
    (tmp_path / "n1.lock").write_text("")
    (tmp_path / "n1.lock").chmod(0o666)
    with node_locks(tmp_path, ["n1"], timeout=1):
        pass
    assert stat.S_IMODE((tmp_path / "n1.lock").stat().st_mode) == 0o640


def test_takes_locks_in_sorted_order(tmp_path, mocker):
    """Locks are taken in sorted node order whatever order the caller gives, so processes cannot deadlock."""
    opened = mocker.patch("elastic.locks.os.open", wraps=os.open)
    with node_locks(tmp_path, ["c", "a", "b", "a"], timeout=1):
        pass
    assert [Path(call.args[0]).name for call in opened.call_args_list] == ["a.lock", "b.lock", "c.lock"]


@contextlib.contextmanager
def held_in_a_thread(lock_dir, name):
    """`name`'s lock held by another thread for the `with` body (flock is per open file, so a
    thread stands in for another process)."""
    held, done = threading.Event(), threading.Event()

    def holder():
        with node_locks(lock_dir, [name], timeout=1):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        yield
    finally:
        done.set()
        thread.join(10)


def test_other_thread_waits_then_times_out_naming_node(tmp_path):
    """While one thread holds a node, another thread's attempt times out with LockTimeout naming the node."""
    with held_in_a_thread(tmp_path, "cpu-007"):
        with pytest.raises(LockTimeout, match="node cpu-007: lock .*cpu-007.lock still held .* after 0.2s"):
            with node_locks(tmp_path, ["cpu-007"], timeout=0.2):
                pass
    assert _free(tmp_path, "cpu-007")


def test_second_thread_gets_lock_after_release(tmp_path):
    """A waiting thread acquires the node as soon as the holder releases it."""
    order: list[str] = []
    held = threading.Event()

    def holder():
        with node_locks(tmp_path, ["n1"], timeout=1):
            held.set()
            threading.Event().wait(0.3)
            order.append("holder released")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    with node_locks(tmp_path, ["n1"], timeout=10):
        order.append("waiter acquired")
    thread.join(10)
    assert order == ["holder released", "waiter acquired"]


def _hold_in_child(lock_dir, name, held, release):
    with node_locks(lock_dir, [name], timeout=5):
        held.set()
        release.wait(10)


def test_other_process_holds_node(tmp_path):
    """A node held by another process times out here, and is free once that process releases it."""
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    child = context.Process(target=_hold_in_child, args=(tmp_path, "cpu-009", held, release))
    child.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockTimeout, match="node cpu-009"):
            with node_locks(tmp_path, ["cpu-009"], timeout=0.2):
                pass
    finally:
        release.set()
        child.join(10)
    assert child.exitcode == 0
    assert _free(tmp_path, "cpu-009")


def test_partial_acquisition_releases_what_was_taken(tmp_path):
    """When a later node times out, the nodes already locked are released."""
    with node_locks(tmp_path, ["b"], timeout=1):
        with pytest.raises(LockTimeout, match="node b"):
            with node_locks(tmp_path, ["a", "b", "c"], timeout=0.1):
                pass
        assert _free(tmp_path, "a")


def test_exception_in_body_releases_all(tmp_path):
    """An exception inside the block releases every node lock and propagates."""
    with pytest.raises(RuntimeError, match="flow failed"):
        with node_locks(tmp_path, ["a", "b"], timeout=1):
            raise RuntimeError("flow failed")
    assert _free(tmp_path, "a") and _free(tmp_path, "b")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/etc/passwd", "a\0b"])
def test_rejects_names_that_are_not_file_names(tmp_path, name):
    """A name that cannot be a file in the lock dir is a UsageError naming it, before any lock is taken."""
    with pytest.raises(UsageError, match="cannot name a lock file") as caught:
        with node_locks(tmp_path / "locks", ["ok", name], timeout=1):
            pass
    assert repr(name) in str(caught.value)
    assert not (tmp_path / "locks").exists()


def test_unusable_lock_dir_is_local_error(tmp_path):
    """A lock dir that cannot be created is a LocalError naming it and the OS's reason."""
    (tmp_path / "file").write_text("")
    with pytest.raises(LocalError, match=r"cannot create lock directory .*file/locks: Not a directory$"):
        with node_locks(tmp_path / "file" / "locks", ["a"], timeout=1):
            pass


def test_symlinked_lock_file_is_refused_not_followed(tmp_path):
    """A symlink planted as <node>.lock is a LocalError (ELOOP) and its target is neither created nor touched."""
    lock_dir, outside = tmp_path / "locks", tmp_path / "outside"
    lock_dir.mkdir()
    outside.mkdir()
    (lock_dir / "cpu-001.lock").symlink_to(outside / "victim")
    (lock_dir / "cpu-002.lock").symlink_to("/etc/passwd")
    before = os.stat("/etc/passwd")
    for node in ("cpu-001", "cpu-002"):
        with pytest.raises(LocalError) as caught:
            with node_locks(lock_dir, [node], timeout=1):
                pass
        message = str(caught.value)
        assert f"{lock_dir / node}.lock" in message and "symbolic links" in message and "\n" not in message
    assert not (outside / "victim").exists()
    after = os.stat("/etc/passwd")
    assert (after.st_mode, after.st_size, after.st_mtime) == (before.st_mode, before.st_size, before.st_mtime)


def test_symlinked_exclusive_lock_is_refused(tmp_path):
    """exclusive_lock does not follow a symlink either."""
    (tmp_path / "reconcile.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LocalError, match="reconcile.lock: Too many levels of symbolic links"):
        with exclusive_lock(tmp_path / "reconcile.lock", timeout=1):
            pass
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(("code", "reason"), [
    (errno.EACCES, "Permission denied (created by another user?)"),
    (errno.EMFILE, "Too many open files (raise LimitNOFILE for slurmctld)"),
    (errno.ENOSPC, "No space left on device"),
    (errno.EROFS, "Read-only file system"),
    (errno.EIO, "Input/output error"),
])
def test_os_error_opening_lock_file_is_local_error(tmp_path, monkeypatch, code, reason):
    """Any OSError opening a lock file is a one-line LocalError naming the file and strerror; earlier locks are
    released."""
    real_open = os.open

    def failing_open(path, flags, mode=0o777, *args, **kwargs):
        if str(path).endswith("b.lock"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode, *args, **kwargs)

    (tmp_path / "b.lock").write_text("")  # so EACCES takes filelock's retry without O_CREAT too
    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(LocalError) as caught:
        with node_locks(tmp_path, ["a", "b"], timeout=1):
            pass
    monkeypatch.undo()
    assert str(caught.value) == f"cannot open or lock {tmp_path / 'b.lock'}: {reason}"
    assert _free(tmp_path, "a")


def test_filesystem_without_flock_is_local_error(tmp_path, monkeypatch):
    """Where flock(2) is not supported the lock fails closed instead of falling back to a stale-prone soft lock."""
    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    with pytest.raises(LocalError, match="cannot open or lock .*a.lock: Function not implemented"):
        with node_locks(tmp_path, ["a"], timeout=1):
            pass
    monkeypatch.setattr(filelock._unix, "_lock_fd_nonblocking", lambda fd: no_flock(fd, 0))
    with pytest.raises(LocalError, match="cannot open or lock .*b.lock: Function not implemented"):
        with exclusive_lock(tmp_path / "b.lock", timeout=1):
            pass


def test_too_many_nodes_for_the_open_file_limit(tmp_path, monkeypatch):
    """2,000 nodes under a soft limit of 1024 are refused up front with the numbers, before any lock file is opened."""
    monkeypatch.setattr(locks.resource, "getrlimit", lambda which: (1024, 4096))
    names = [f"cpu-{i:04d}" for i in range(2000)]
    with pytest.raises(LocalError) as caught:
        with node_locks(tmp_path / "locks", names, timeout=1):
            pass
    assert str(caught.value) == ("locking 2000 nodes needs 2256 open files for node locks, the limit is 1024; "
                                 "raise LimitNOFILE for slurmctld")
    assert not (tmp_path / "locks").exists()


def test_open_file_limit_counts_distinct_nodes_and_allows_exact_fit(tmp_path, monkeypatch):
    """Exactly nodes + 256 open files is enough, duplicates count once, and an unlimited soft limit passes."""
    monkeypatch.setattr(locks.resource, "getrlimit", lambda which: (258, 4096))
    with node_locks(tmp_path, ["a", "b", "a"], timeout=1):
        pass
    with pytest.raises(LocalError, match="locking 3 nodes needs 259 open files"):
        with node_locks(tmp_path, ["a", "b", "c"], timeout=1):
            pass
    monkeypatch.setattr(locks.resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with node_locks(tmp_path, ["a", "b", "c"], timeout=1):
        pass


def _run_out_of_fds(lock_dir, sender):
    """In a forked child: a real EMFILE while taking node locks must be a LocalError, and free what was taken."""
    try:
        soft = 300
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        spare = []
        while True:  # leave about 10 fds free: fewer than the 40 locks wanted
            fd = os.open(os.devnull, os.O_RDONLY)
            spare.append(fd)
            if fd >= soft - 11:
                break
        try:
            with node_locks(lock_dir, [f"n{i:02d}" for i in range(40)], timeout=1):
                sender.send("no error")
                return
        except LocalError as exc:
            message = str(exc)
        for fd in spare:
            os.close(fd)
        sender.send(message if _free(lock_dir, "n00") else "n00 still held")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        sender.send(f"unexpected {exc!r}")


def test_real_emfile_is_local_error(tmp_path):
    """With RLIMIT_NOFILE really exhausted (in a forked child) the lock that hits EMFILE gives a LocalError."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_out_of_fds, args=(tmp_path, sender))
    child.start()
    try:
        assert receiver.poll(30)
        message = receiver.recv()
    finally:
        child.join(10)
    assert message.startswith(f"cannot open or lock {tmp_path}/n") and message.endswith(
        ": Too many open files (raise LimitNOFILE for slurmctld)"), message


def test_exclusive_lock_single_instance(tmp_path):
    """A second holder of an exclusive lock times out naming the lock file; after release it is free."""
    path = tmp_path / "run" / "reconcile.lock"
    with exclusive_lock(path, timeout=1):
        with pytest.raises(LockTimeout, match="reconcile.lock: lock .* still held"):
            with exclusive_lock(path, timeout=0.1):
                pass
    with exclusive_lock(path, timeout=0):
        assert path.exists()


def test_free_node_locks_takes_what_is_free_without_waiting_and_lets_it_all_go(tmp_path):
    """Another holder has cpu-002: free_node_locks yields the other two at once, holds them for its
    body (another taker gets none of them), and frees them after."""
    import time

    from elastic.locks import free_node_locks

    with held_in_a_thread(tmp_path, "cpu-002"):
        started = time.monotonic()
        with free_node_locks(tmp_path, ["cpu-003", "cpu-001", "cpu-002"]) as held:
            assert held == {"cpu-001", "cpu-003"} and time.monotonic() - started < 1.0
            with free_node_locks(tmp_path, ["cpu-001", "cpu-003"]) as again:
                assert again == set()
        assert _free(tmp_path, "cpu-001") and _free(tmp_path, "cpu-003")
    with free_node_locks(tmp_path, ["cpu-002"]) as held:
        assert held == {"cpu-002"}


def test_free_node_locks_refuses_a_name_that_cannot_name_a_lock_file_before_taking_any(tmp_path):
    from elastic.locks import free_node_locks

    with pytest.raises(UsageError):
        with free_node_locks(tmp_path, ["ok", "../evil"]):
            pass
    assert _free(tmp_path, "ok")
