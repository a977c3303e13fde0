"""elastic.wiring: where a run without HOME keeps stevedore's entry-point cache."""

from __future__ import annotations

import os

import pytest

from elastic.wiring import keep_caches_in


@pytest.mark.parametrize(("home", "xdg", "expected"), [
    (None, None, "{state}/cache"),  # slurmctld's environment
    ("/home/admin", None, None),  # an admin's shell: ~/.cache as usual
    (None, "/var/cache/site", "/var/cache/site"),  # a site that chose one
])
def test_only_a_run_without_home_or_xdg_cache_home_keeps_the_cache_in_the_state_dir(tmp_path, monkeypatch, home, xdg,
                                                                                        expected):
    for name, value in (("HOME", home), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    keep_caches_in(tmp_path)
    assert os.environ.get("XDG_CACHE_HOME") == (expected.format(state=tmp_path) if expected else None)
