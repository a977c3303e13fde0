from __future__ import annotations

import multiprocessing
import os
import stat
import threading

import pytest

from elastic.errors import ConfigError, LockTimeout
from elastic.locks import exclusive_lock, node_locks


def _free(lock_dir, name) -> bool:
    try:
        with node_locks(lock_dir, [name], timeout=0):
            return True
    except LockTimeout:
        return False


def test_creates_lock_dir_and_one_file_per_node(tmp_path):
    """The lock dir is created 0755 (under slurmctld's umask 022) with one <node>.lock per node."""
    lock_dir = tmp_path / "state" / "locks"
    old = os.umask(0o022)
    try:
        with node_locks(lock_dir, ["cpu-002", "cpu-001"], timeout=1):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o755
    assert sorted(p.name for p in lock_dir.iterdir()) == ["cpu-001.lock", "cpu-002.lock"]


def test_takes_locks_in_sorted_order(tmp_path, mocker):
    """Locks are taken in sorted node order whatever order the caller gives, so processes cannot deadlock."""
    import filelock

    made = mocker.patch("elastic.locks.filelock.FileLock", wraps=filelock.FileLock)
    with node_locks(tmp_path, ["c", "a", "b", "a"], timeout=1):
        pass
    assert [call.args[0].name for call in made.call_args_list] == ["a.lock", "b.lock", "c.lock"]


def test_other_thread_waits_then_times_out_naming_node(tmp_path):
    """While one thread holds a node, another thread's attempt times out with LockTimeout naming the node."""
    held, done = threading.Event(), threading.Event()

    def holder():
        with node_locks(tmp_path, ["cpu-007"], timeout=1):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockTimeout, match="node cpu-007: lock .*cpu-007.lock still held .* after 0.2s"):
            with node_locks(tmp_path, ["cpu-007"], timeout=0.2):
                pass
    finally:
        done.set()
        thread.join(10)
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


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_rejects_names_that_are_not_file_names(tmp_path, name):
    """A name that would escape the lock dir is refused."""
    with pytest.raises(ValueError, match="cannot name a lock file"):
        with node_locks(tmp_path, [name], timeout=1):
            pass


def test_unusable_lock_dir_is_config_error(tmp_path):
    """A lock dir that cannot be created is a ConfigError naming it."""
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="file/locks: cannot create lock directory"):
        with node_locks(tmp_path / "file" / "locks", ["a"], timeout=1):
            pass


def test_exclusive_lock_single_instance(tmp_path):
    """A second holder of an exclusive lock times out naming the lock file; after release it is free."""
    path = tmp_path / "run" / "reconcile.lock"
    with exclusive_lock(path, timeout=1):
        with pytest.raises(LockTimeout, match="reconcile.lock: lock .* still held"):
            with exclusive_lock(path, timeout=0.1):
                pass
    with exclusive_lock(path, timeout=0):
        assert path.exists()
