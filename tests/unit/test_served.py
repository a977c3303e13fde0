"""The server each node was last served with (elastic.served), in a real state dir."""

from __future__ import annotations

import json
import os

from elastic.locks import exclusive_lock
from elastic.served import ServedServers


def test_a_resume_s_servers_reach_the_next_run_and_a_node_served_again_keeps_only_its_new_one(tmp_path):
    path = tmp_path / "served.json"
    ServedServers(path).record({"cpu-001": {"alpha": "s-1"}, "cpu-002": {"beta": "s-2"}})
    ServedServers(path).record({"cpu-001": {"beta": "s-3"}})
    assert ServedServers(path).read() == {"cpu-001": {"beta": "s-3"}, "cpu-002": {"beta": "s-2"}}
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_malformed_entries_are_dropped_and_a_file_others_could_write_is_not_used(tmp_path):
    path = tmp_path / "served.json"
    path.write_text(json.dumps({"version": 1, "nodes": {"cpu-001": {"alpha": 7}, "cpu-002": "s-2",
                                                         "cpu-003": {"alpha": "s-3", "beta": ""}}}))
    path.chmod(0o600)
    assert ServedServers(path).read() == {"cpu-003": {"alpha": "s-3"}}
    path.chmod(0o666)
    warnings: list[str] = []
    assert ServedServers(path, warn=warnings.append).read() == {}
    assert warnings and "mode 0600" in warnings[0]


def test_a_write_that_cannot_happen_is_a_warning_not_an_error(tmp_path):
    path = tmp_path / "served.json"
    warnings: list[str] = []
    with exclusive_lock(tmp_path / "served.json.lock", 1.0):
        ServedServers(path, warn=warnings.append).record({"cpu-001": {"alpha": "s-1"}})
    assert len(warnings) == 1 and "not saved" in warnings[0]
    (tmp_path / "a-file").write_text("")
    ServedServers(tmp_path / "a-file" / "served.json", warn=warnings.append).record({"cpu-001": {"alpha": "s"}})
    assert len(warnings) == 2 and ServedServers(path).read() == {}
