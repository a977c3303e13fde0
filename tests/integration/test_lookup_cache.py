"""What a controller's earlier runs learned, used by whole runs as slurmctld starts them, against the
emulator: the flavor, image and network ids (state_dir/lookups.json) and the compute endpoint's
version discovery (kept with the cached token) spare a later run those requests; an image replaced
under its name is looked up again once and every node still boots."""

from __future__ import annotations

import json
import stat

import pytest

from elastic.lab.cloud import LabCloud

from tests.support.programs import one_cloud_site

pytestmark = pytest.mark.integration

LOOK_UPS = ("GET /flavors/detail", "GET /image/v2/images", "GET /network/v2.0/networks")


@pytest.fixture
def site_and_lab(tmp_path):
    with one_cloud_site(tmp_path) as lab_and_site:
        yield lab_and_site


def _endpoints(lab: LabCloud) -> list[str]:
    return [r["endpoint"] for r in lab.requests("lab")]


def test_a_second_resume_sends_no_look_up_and_no_discovery(site_and_lab):
    """Run 1 looks the names up (one request each) and keeps them (0600); run 2 sends none of them,
    no Keystone request and no compute discovery, and speaks the same microversion."""
    lab, site = site_and_lab
    assert site.run("resume", "cpu-001").returncode == 0
    first = lab.requests("lab")
    assert sorted(e for e in _endpoints(lab) if e in LOOK_UPS) == sorted(LOOK_UPS)
    cache = site.root / "state" / "lookups.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    lab.reset_requests()
    assert site.run("resume", "cpu-002").returncode == 0
    second = _endpoints(lab)
    assert not [e for e in second if e in LOOK_UPS or e.startswith(("GET /image", "GET /network"))], second
    assert not [r for r in lab.requests("lab") if r["service"] == "identity"], second
    assert "GET /compute/v2.1" not in second, second
    versions = {r["microversion"] for r in first + lab.requests("lab") if r["endpoint"] == "POST /servers"}
    assert len(versions) == 1 and None not in versions, versions


def test_an_image_replaced_under_its_name_is_looked_up_again(site_and_lab):
    """The cached image id is deleted and a new image takes its name: the next resume's create is
    refused (Nova's 400), the names are looked up once more, the node boots from the new image and
    the new id is kept."""
    lab, site = site_and_lab
    assert site.run("resume", "cpu-001").returncode == 0
    stored = json.loads((site.root / "state" / "lookups.json").read_text())["scopes"]
    [old] = [entries["image:debian-12"]["id"] for entries in stored.values()]
    # A new image of the same name (Glance gives it a fresh id), then the old one is deleted.
    new = lab.add_image("lab", "debian-12")
    state = lab.clouds["lab"]
    with state.lock:
        del state.images[old]
    assert new != old
    lab.reset_requests()
    assert site.run("resume", "cpu-002").returncode == 0
    creates = [r["status"] for r in lab.requests("lab") if r["endpoint"] == "POST /servers"]
    assert creates == [400, 202], creates
    assert [e for e in _endpoints(lab) if e in LOOK_UPS].count("GET /image/v2/images") == 1
    assert [s["name"] for s in lab.servers("lab") if s["status"] == "ACTIVE"] == ["cpu-001", "cpu-002"]
    assert any(e.get("event") == "resume.lookup_renewed" for e in site.log_events())
    stored = json.loads((site.root / "state" / "lookups.json").read_text())["scopes"]
    assert [entries["image:debian-12"]["id"] for entries in stored.values()] == [new]
