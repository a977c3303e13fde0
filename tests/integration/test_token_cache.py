"""The Keystone token cache across whole runs, as slurmctld starts them, against the emulator: the
second run within the token's life sends no Keystone request; the file is 0600 and no token reaches
the log; a broken file or a revoked token never stops a run."""

from __future__ import annotations

import json
import stat

import pytest

from elastic.config import META_CLUSTER, META_NODE, META_POOL
from elastic.lab.cloud import LabCloud

from tests.support.programs import one_cloud_site

pytestmark = pytest.mark.integration



@pytest.fixture
def site_and_lab(tmp_path):
    with one_cloud_site(tmp_path) as lab_and_site:
        yield lab_and_site


def _seed(lab: LabCloud, node: str) -> None:
    lab.seed_server("lab", node, metadata={META_CLUSTER: "itest", META_NODE: node, META_POOL: "cpu"})


def _identity(lab: LabCloud) -> list[str]:
    return [r["endpoint"] for r in lab.requests("lab") if r["service"] == "identity"]


def _tokens(lab: LabCloud) -> list[str]:
    """Every token the emulator issued (the X-Subject-Token of each login)."""
    return [token for token in lab.clouds["lab"].tokens]


def test_a_second_run_sends_no_keystone_request(site_and_lab):
    """Run 1 logs in and keeps the token (0600); run 2 suspends with it: no identity request, and
    no token in the log."""
    lab, site = site_and_lab
    for node in ("cpu-001", "cpu-002"):
        _seed(lab, node)
    assert site.run("suspend", "cpu-001").returncode == 0
    assert _identity(lab), "the first run must log in"
    cache = site.root / "state" / "tokens.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    lab.reset_requests()
    assert site.run("suspend", "cpu-002").returncode == 0
    assert _identity(lab) == []
    assert [s["name"] for s in lab.servers("lab")] == []
    log = site.log_file.read_text()
    stored = json.loads(cache.read_text())["tokens"]
    assert stored
    for entry in stored.values():
        assert json.loads(entry["state"])["auth_token"] not in log
    for token in _tokens(lab):
        assert token not in log


@pytest.mark.parametrize("content", ["{broken", '{"tokens": 5}', '{"tokens": {"x": {"state": "{}", "expires": 1e12}}}'])
def test_a_broken_token_cache_is_ignored(site_and_lab, content):
    """Whatever the file holds, the run logs in and serves the node; the file is rewritten."""
    lab, site = site_and_lab
    _seed(lab, "cpu-001")
    cache = site.root / "state" / "tokens.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(content)
    cache.chmod(0o600)
    assert site.run("suspend", "cpu-001").returncode == 0
    assert [s["name"] for s in lab.servers("lab")] == []
    assert "tokens" in json.loads(cache.read_text())


def test_a_token_cache_readable_by_others_is_not_used(site_and_lab):
    """A cache file with group or world bits is ignored with a warning: the run logs in."""
    lab, site = site_and_lab
    for node in ("cpu-001", "cpu-002"):
        _seed(lab, node)
    assert site.run("suspend", "cpu-001").returncode == 0
    cache = site.root / "state" / "tokens.json"
    cache.chmod(0o644)
    lab.reset_requests()
    assert site.run("suspend", "cpu-002").returncode == 0
    assert _identity(lab), "a widened cache must not be trusted"
    assert any(e.get("event") == "tokens.uncached" and "0600" in e.get("error", "") for e in site.log_events())


def test_a_revoked_cached_token_is_replaced(site_and_lab):
    """The cloud revoked every token since the last run: keystoneauth logs in again after the
    401, the node is served, and the new token is kept for the next run."""
    lab, site = site_and_lab
    for node in ("cpu-001", "cpu-002"):
        _seed(lab, node)
    assert site.run("suspend", "cpu-001").returncode == 0
    assert lab.revoke_tokens("lab") >= 1
    lab.reset_requests()
    assert site.run("suspend", "cpu-002").returncode == 0
    assert [s["name"] for s in lab.servers("lab")] == []
    statuses = [r["status"] for r in lab.requests("lab")]
    assert 401 in statuses and _identity(lab)
    # The token it got after the 401 is kept: the next run logs in no more.
    _seed(lab, "cpu-003")
    lab.reset_requests()
    assert site.run("suspend", "cpu-003").returncode == 0
    assert _identity(lab) == [] and 401 not in [r["status"] for r in lab.requests("lab")]
