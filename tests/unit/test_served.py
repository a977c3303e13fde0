"""The server each node was last served with (elastic.served), in a real state dir."""

from __future__ import annotations

import json
import os

from elastic.locks import exclusive_lock
from elastic.served import Served, ServedServers


def test_a_resume_s_servers_are_taken_once_by_the_suspend_of_their_nodes(tmp_path):
    """A node served again keeps only its new server; a suspend takes its nodes' entries out of the
    file (a second one gets nothing), and leaves the others; the file is 0600."""
    path = tmp_path / "served.json"
    ServedServers(path).record("test", {"cpu-001": Served("alpha", "s-1", "cpu"),
                                        "cpu-002": Served("beta", "s-2", "cpu")})
    ServedServers(path).record("test", {"cpu-001": Served("beta", "s-3", "cpu")})
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert ServedServers(path).take("test", ["cpu-001", "cpu-003"]) == {"cpu-001": Served("beta", "s-3", "cpu")}
    assert ServedServers(path).take("test", ["cpu-001"]) == {}
    assert ServedServers(path).take("test", ["cpu-002"]) == {"cpu-002": Served("beta", "s-2", "cpu")}


def test_another_cluster_s_entry_is_not_used_but_still_taken(tmp_path):
    """A server noted under another `cluster:` (renamed, or another config sharing the state dir) is
    not ours to delete without a look."""
    path = tmp_path / "served.json"
    ServedServers(path).record("old-name", {"cpu-001": Served("alpha", "s-1", "cpu")})
    assert ServedServers(path).take("test", ["cpu-001"]) == {}
    assert ServedServers(path).take("old-name", ["cpu-001"]) == {}


def test_malformed_entries_are_dropped_and_a_file_others_could_write_is_not_used(tmp_path):
    path = tmp_path / "served.json"
    good = {"cluster": "test", "cloud": "alpha", "id": "s-4", "pool": "cpu"}
    path.write_text(json.dumps({"version": 1, "nodes": {
        "cpu-001": {**good, "id": 7}, "cpu-002": "s-2", "cpu-003": {**good, "pool": ""}, "cpu-004": good}}))
    path.chmod(0o600)
    nodes = ["cpu-001", "cpu-002", "cpu-003", "cpu-004"]
    assert ServedServers(path).take("test", nodes) == {"cpu-004": Served("alpha", "s-4", "cpu")}
    ServedServers(path).record("test", {"cpu-001": Served("alpha", "s-1", "cpu")})
    path.chmod(0o666)
    warnings: list[str] = []
    assert ServedServers(path, warn=warnings.append).take("test", nodes) == {}
    assert warnings and "mode 0600" in warnings[0]


def test_a_change_that_cannot_happen_is_a_warning_and_takes_nothing(tmp_path):
    path = tmp_path / "served.json"
    ServedServers(path).record("test", {"cpu-001": Served("alpha", "s-1", "cpu")})
    warnings: list[str] = []
    with exclusive_lock(tmp_path / "served.json.lock", 1.0):
        assert ServedServers(path, warn=warnings.append).take("test", ["cpu-001"]) == {}
    assert len(warnings) == 1 and "not saved" in warnings[0]
    (tmp_path / "a-file").write_text("")
    ServedServers(tmp_path / "a-file" / "served.json", warn=warnings.append).record(
        "test", {"cpu-001": Served("alpha", "s", "cpu")})
    assert len(warnings) == 2
