from __future__ import annotations

import json
import stat
import threading

import pytest

from elastic.history import MAX_NODE_FAILURES, History as _History
from elastic.locks import exclusive_lock

NOW = 1_000_000.0


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "history.json"


def History(path, errors: list[str] | None = None, **kwargs) -> _History:
    """A History whose reported errors land in `errors`; with none given, any error fails the test."""

    def unexpected(message: str) -> None:
        raise AssertionError(f"unexpected history error: {message}")

    return _History(path, on_error=errors.append if errors is not None else unexpected, **kwargs)


def test_missing_file_is_empty_and_reads_create_nothing(path):
    """Without a file there is no cool-down and no failure, and asking writes no history file."""
    history = History(path)
    assert not history.cooling_down("kaizen", "cpu", NOW, 600)
    assert history.node_failures("cpu-001", NOW, 3600) == 0
    history.clear_cloud_failure("kaizen", "cpu")
    assert not path.exists()


def test_cloud_cools_down_for_its_pool_only(path):
    """A recorded cloud failure cools down that cloud for that pool, strictly less than the cool-down."""
    history = History(path)
    history.record_cloud_failure("kaizen", "cpu", "quota", NOW)
    assert history.cooling_down("kaizen", "cpu", NOW + 599, 600)
    assert not history.cooling_down("kaizen", "cpu", NOW + 600, 600)
    assert not history.cooling_down("kaizen", "gpu", NOW + 1, 600)
    assert not history.cooling_down("engage1", "cpu", NOW + 1, 600)


def test_clear_cloud_failure_ends_cool_down(path):
    """A success clears the cloud's failure for the pool, leaving other pools' failures."""
    history = History(path)
    history.record_cloud_failure("kaizen", "cpu", "quota", NOW)
    history.record_cloud_failure("kaizen", "gpu", "capacity", NOW)
    history.clear_cloud_failure("kaizen", "cpu")
    assert not history.cooling_down("kaizen", "cpu", NOW + 1, 600)
    assert history.cooling_down("kaizen", "gpu", NOW + 1, 600)


def test_history_persists_between_runs(path):
    """What one History wrote, a new History on the same file (the next program run) sees."""
    History(path).record_cloud_failure("kaizen", "cpu", "capacity", NOW)
    History(path).record_node_failure("cpu-001", NOW)
    assert History(path).cooling_down("kaizen", "cpu", NOW + 10, 600)
    assert History(path).node_failures("cpu-001", NOW + 10, 3600) == 1


def test_node_failures_count_within_window_and_prune_older(path):
    """Only failures inside the window count, and older ones are removed from the file."""
    history = History(path)
    for when in (NOW, NOW + 100, NOW + 200):
        history.record_node_failure("cpu-001", when)
    history.record_node_failure("cpu-002", NOW)
    assert history.node_failures("cpu-001", NOW + 250, 200) == 2
    stored = json.loads(path.read_text())["nodes"]
    assert stored == {"cpu-001": [NOW + 100, NOW + 200], "cpu-002": [NOW]}


def test_node_failure_list_is_bounded(path):
    """A node's stored failures are capped, keeping the newest."""
    history = History(path)
    for index in range(MAX_NODE_FAILURES + 5):
        history.record_node_failure("cpu-001", NOW + index)
    stored = json.loads(path.read_text())["nodes"]["cpu-001"]
    assert len(stored) == MAX_NODE_FAILURES and stored[-1] == NOW + MAX_NODE_FAILURES + 4


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '"text"', "", '{"clouds": 7, "nodes": []}'])
def test_corrupt_file_is_empty_history(path, content):
    """A corrupt file reads as empty, and the next change replaces it with a valid one."""
    path.parent.mkdir(parents=True)
    path.write_text(content)
    history = History(path)
    assert not history.cooling_down("kaizen", "cpu", NOW, 600)
    history.record_node_failure("cpu-001", NOW)
    assert json.loads(path.read_text())["nodes"] == {"cpu-001": [NOW]}


def test_malformed_entries_are_dropped(path):
    """Well-formed entries survive next to malformed ones, which are ignored."""
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "clouds": {"kaizen": {"cpu": {"kind": "quota", "at": NOW}, "gpu": {"kind": "quota"}}, "bad": 3},
        "nodes": {"cpu-001": [NOW, "x", True], "cpu-002": "soon"},
    }))
    history = History(path)
    assert history.cooling_down("kaizen", "cpu", NOW + 1, 600)
    assert not history.cooling_down("kaizen", "gpu", NOW + 1, 600)
    assert history.node_failures("cpu-001", NOW + 1, 3600) == 1
    assert history.node_failures("cpu-002", NOW + 1, 3600) == 0


def test_write_is_atomic_and_leaves_no_temporary(path):
    """The file is replaced whole (mode 0640: no other local user reads it) and no temporary file is left beside it."""
    History(path).record_cloud_failure("kaizen", "cpu", "quota", NOW)
    assert sorted(p.name for p in path.parent.iterdir()) == ["history.json", "history.json.lock"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_failed_write_keeps_old_file_and_is_reported_not_raised(path, mocker):
    """When the rename fails the old history stays, the temporary is removed, and the error is
    reported with the file's name; the caller goes on (history is advice, never a reason to stop)."""
    errors: list[str] = []
    history = History(path, errors)
    history.record_node_failure("cpu-001", NOW)
    before = path.read_text()
    mocker.patch("elastic.history.os.replace", side_effect=OSError(28, "No space left on device"))

    history.record_node_failure("cpu-001", NOW + 1)

    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["history.json", "history.json.lock"]
    assert errors == [f"history change not saved: {path}: cannot write history: No space left on device"]


def test_held_lock_is_reported_and_the_change_dropped(path):
    """A change waits for the file lock; when another process keeps it, the change is dropped and
    reported, and reads still answer from the file."""
    History(path).record_node_failure("cpu-001", NOW)
    errors: list[str] = []
    history = History(path, errors, lock_timeout=0.1)
    with exclusive_lock(path.with_name("history.json.lock"), timeout=1):
        history.record_node_failure("cpu-001", NOW + 1)
        assert history.node_failures("cpu-001", NOW + 2, 3600) == 1
    assert len(errors) == 2 and all("history.json.lock" in e and "still held" in e for e in errors)
    assert History(path).node_failures("cpu-001", NOW + 2, 3600) == 1


def test_unwritable_state_dir_is_reported(tmp_path):
    """A state dir that cannot be created (a file in the way) loses the change, not the run."""
    (tmp_path / "state").write_text("not a directory")
    errors: list[str] = []
    history = History(tmp_path / "state" / "history.json", errors)

    history.record_cloud_failure("kaizen", "cpu", "quota", NOW)

    assert not history.cooling_down("kaizen", "cpu", NOW, 600)
    assert errors and "not saved" in errors[0]


def test_concurrent_records_are_not_lost(path):
    """Two threads (as two programs) recording at once lose no update."""
    start = threading.Barrier(2)

    def record(node):
        history = History(path)
        start.wait()
        for index in range(40):
            history.record_node_failure(node, NOW + index)
            history.record_node_failure("shared", NOW + index)

    threads = [threading.Thread(target=record, args=(node,)) for node in ("cpu-001", "cpu-002")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    history = History(path)
    assert history.node_failures("cpu-001", NOW + 40, 3600) == 40
    assert history.node_failures("cpu-002", NOW + 40, 3600) == 40
    assert history.node_failures("shared", NOW + 40, 3600) == 80


def test_health_problems_and_pending_deletes_survive_a_new_process(path):
    """A cloud marked down keeps its first `since`; problems and pending deletes round-trip; settling
    a pending delete removes only that cloud's entry."""
    history = History(path)
    history.mark_cloud_down("east", "no answer", NOW)
    history.mark_cloud_down("east", "no answer again", NOW + 60)
    history.record_problem("east", "cpu", "auth", "authentication failed", NOW)
    history.add_pending_deletes({"cpu-001": {"east": "suspend: cannot list", "west": "suspend: 503"}}, NOW)
    history.add_pending_deletes({"cpu-001": {"east": "later why"}}, NOW + 5)
    again = History(path)
    assert again.clouds_down() == {"east": {"since": NOW, "error": "no answer again", "at": NOW + 60}}
    assert again.problems() == {"east": {"cpu": {"kind": "auth", "error": "authentication failed", "at": NOW}}}
    assert again.pending_deletes()["cpu-001"]["east"] == {"since": NOW, "why": "suspend: cannot list"}
    again.clear_pending_deletes({"cpu-001": ["east"]})
    again.mark_cloud_up("east")
    again.clear_problem("east", "cpu")
    last = History(path)
    assert list(last.pending_deletes()["cpu-001"]) == ["west"]
    assert last.clouds_down() == {} and last.problems() == {}


def test_malformed_new_sections_are_dropped_entry_by_entry(path):
    """Entries of health, problems and pending without a number for their time are dropped, the rest kept."""
    path.parent.mkdir()
    path.write_text(json.dumps({
        "health": {"east": {"since": "soon", "at": 1}, "west": {"since": 1, "at": 2, "error": "x"}},
        "problems": {"east": {"cpu": {"kind": "auth"}, "gpu": {"kind": "config", "at": 3}}, "west": []},
        "pending": {"cpu-001": {"east": {"since": None}}, "cpu-002": {"west": {"since": 4}}, "cpu-003": "x"},
    }))
    history = History(path)
    assert history.clouds_down() == {"west": {"since": 1.0, "at": 2.0, "error": "x"}}
    assert history.problems() == {"east": {"gpu": {"kind": "config", "error": "", "at": 3.0}}}
    assert history.pending_deletes() == {"cpu-002": {"west": {"since": 4.0, "why": ""}}}


def test_record_node_failures_is_one_write_for_many_nodes(path, mocker):
    """Failures of 1,000 nodes are counted (within the window) in one locked write of the file."""
    history = History(path)
    history.record_node_failures(["cpu-0001"], NOW - 5000)
    writes = mocker.spy(history, "_write")
    counts = history.record_node_failures([f"cpu-{i:04d}" for i in range(1, 1001)], NOW, window_seconds=3600)
    assert writes.call_count == 1 and len(counts) == 1000 and counts["cpu-0001"] == 1


def test_release_times_persist_in_one_write_and_keep_the_latest(path, mocker):
    """A suspend's release times reach the next run, all nodes in one write; an earlier time does
    not move a later one back, and a malformed entry is dropped."""
    History(path).record_releases(["cpu-001", "cpu-002"], NOW + 10)
    write = mocker.spy(_History, "_write")
    History(path).record_releases(["cpu-001", "cpu-003"], NOW)
    assert write.call_count == 1
    assert History(path).releases() == {"cpu-001": NOW + 10, "cpu-002": NOW + 10, "cpu-003": NOW}
    data = json.loads(path.read_text())
    data["released"]["cpu-002"] = "soon"
    path.write_text(json.dumps(data))
    assert History(path).releases() == {"cpu-001": NOW + 10, "cpu-003": NOW}


def test_a_release_and_its_pending_deletes_are_one_write(path, mocker):
    """A run killed after the write has both, or neither: never a release whose deletes are unknown.
    An entry already pending keeps its first time and why."""
    History(path).add_pending_deletes({"cpu-001": {"alpha": "suspend: cannot list servers"}}, NOW)
    write = mocker.spy(_History, "_write")
    History(path).record_releases(["cpu-001", "cpu-002"], NOW + 5,
                                  {"cpu-001": {"alpha": "suspend: under way", "beta": "suspend: under way"},
                                   "cpu-002": {"alpha": "suspend: under way"}})
    assert write.call_count == 1
    history = History(path)
    assert history.releases() == {"cpu-001": NOW + 5, "cpu-002": NOW + 5}
    pending = history.pending_deletes()
    assert pending["cpu-001"]["alpha"] == {"since": NOW, "why": "suspend: cannot list servers"}
    assert pending["cpu-001"]["beta"]["since"] == NOW + 5 and set(pending["cpu-002"]) == {"alpha"}
