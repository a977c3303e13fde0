"""The 0600 JSON files of the token and look-up caches: what is read, what is ignored, how it is written."""

from __future__ import annotations

import os
import stat

from elastic.private_files import read_mapping, write_mapping


def test_a_written_mapping_reads_back_and_the_file_is_0600_from_the_start(tmp_path):
    path = tmp_path / "cache.json"
    write_mapping(path, "entries", {"b": 2, "a": {"x": 1}})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_mapping(path, "entries", "test cache", warn=print) == {"a": {"x": 1}, "b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"], "no temporary file is left"


def test_what_is_not_ours_to_trust_is_ignored_with_one_warning_each(tmp_path):
    warnings: list[str] = []
    path = tmp_path / "cache.json"
    assert read_mapping(path, "entries", "test cache", warnings.append) == {} and warnings == []  # absent: quiet
    write_mapping(path, "entries", {"a": 1})
    os.chmod(path, 0o644)
    assert read_mapping(path, "entries", "test cache", warnings.append) == {}
    os.chmod(path, 0o600)
    path.write_text("{not json")
    assert read_mapping(path, "entries", "test cache", warnings.append) == {}
    path.write_text('{"version": 1, "other": {}}')
    assert read_mapping(path, "entries", "test cache", warnings.append) == {}
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert read_mapping(link, "entries", "test cache", warnings.append) == {}
    assert [w.split(" ignored: ", 1)[1] for w in warnings] == [
        "it must be ours and mode 0600 (is 0644)", "not JSON", "no entries mapping",
        "Too many levels of symbolic links"]
    assert all(w.startswith("test cache ") for w in warnings)
