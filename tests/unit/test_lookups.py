"""The look-up cache (elastic.lookups): names resolved to ids, kept across runs in one 0600 file."""

from __future__ import annotations

import json
import stat

import pytest

from elastic.lookups import MAX_AGE, LookupCache, fresh_entry

NOW = 1_800_000_000.0
SCOPE = "lab|project-1|http://nova.example/v2.1"


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_for_the_next_run_in_a_0600_file(tmp_path):
    """put() by one run, get() by a later one (a new cache object) within MAX_AGE: the same answer."""
    LookupCache(tmp_path / "lookups.json", clock=Clock()).put(SCOPE, "flavor", "m1.small",
                                                               {"id": "f1", "vcpus": 1, "ram": 2048})
    assert stat.S_IMODE((tmp_path / "lookups.json").stat().st_mode) == 0o600
    later = LookupCache(tmp_path / "lookups.json", clock=Clock(NOW + MAX_AGE - 1))
    assert later.get(SCOPE, "flavor", "m1.small") == {"id": "f1", "vcpus": 1, "ram": 2048}
    assert later.get(SCOPE, "image", "m1.small") is None
    assert later.get("other|project-2|http://nova.example/v2.1", "flavor", "m1.small") is None


def test_an_old_answer_is_looked_up_again(tmp_path):
    """After MAX_AGE (an image replaced under its name is picked up) the answer is not used."""
    LookupCache(tmp_path / "lookups.json", clock=Clock()).put(SCOPE, "image", "debian-12", {"id": "i1"})
    assert LookupCache(tmp_path / "lookups.json", clock=Clock(NOW + MAX_AGE)).get(SCOPE, "image", "debian-12") is None
    assert fresh_entry({"id": "i1", "at": NOW + 5}, NOW) is None  # from the future: a clock moved back
    assert fresh_entry({"id": "", "at": NOW}, NOW) is None
    assert fresh_entry({"id": "i1", "at": NOW}, NOW) == {"id": "i1", "at": NOW}


def test_a_refused_id_is_forgotten_for_every_later_run(tmp_path):
    """forget() removes the entry from the file; the other entries stay."""
    cache = LookupCache(tmp_path / "lookups.json", clock=Clock())
    cache.put(SCOPE, "image", "debian-12", {"id": "i1"})
    cache.put(SCOPE, "network", "private", {"id": "n1"})
    cache.forget(SCOPE, "image", "debian-12")
    later = LookupCache(tmp_path / "lookups.json", clock=Clock())
    assert later.get(SCOPE, "image", "debian-12") is None
    assert later.get(SCOPE, "network", "private") == {"id": "n1"}


@pytest.mark.parametrize("content", ["{broken", '{"scopes": 5}', "[]"])
def test_a_broken_file_is_ignored_with_a_warning_and_rewritten(tmp_path, content):
    """Whatever the file holds, get() answers None (the run looks up), with a warning; put() rewrites it."""
    path = tmp_path / "lookups.json"
    path.write_text(content)
    path.chmod(0o600)
    warnings: list[str] = []
    cache = LookupCache(path, clock=Clock(), warn=warnings.append)
    assert cache.get(SCOPE, "image", "debian-12") is None
    assert warnings and str(path) in warnings[0]
    cache.put(SCOPE, "image", "debian-12", {"id": "i1"})
    assert json.loads(path.read_text())["scopes"][SCOPE]["image:debian-12"]["id"] == "i1"


def test_a_file_others_could_write_is_not_trusted(tmp_path):
    """An id in the file decides what every node boots: a file with group or world bits is ignored."""
    path = tmp_path / "lookups.json"
    LookupCache(path, clock=Clock()).put(SCOPE, "image", "debian-12", {"id": "i1"})
    path.chmod(0o644)
    warnings: list[str] = []
    assert LookupCache(path, clock=Clock(), warn=warnings.append).get(SCOPE, "image", "debian-12") is None
    assert "0600" in warnings[0]


def test_a_cache_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path):
    """A file where the state dir should be: put() warns, get() answers None; nothing raises."""
    (tmp_path / "file").write_text("")
    warnings: list[str] = []
    cache = LookupCache(tmp_path / "file" / "lookups.json", clock=Clock(), warn=warnings.append)
    cache.put(SCOPE, "image", "debian-12", {"id": "i1"})
    assert warnings and "not saved" in warnings[0]
    assert cache.get(SCOPE, "image", "debian-12") is None
