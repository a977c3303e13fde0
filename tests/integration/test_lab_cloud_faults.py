"""Injected faults (latency, 5xx, 429, outages) seen by the real openstacksdk, Nova's microversion
headers on the wire, and the /_lab/ control endpoint."""

from __future__ import annotations

import threading
import time

import keystoneauth1.exceptions
import openstack.exceptions as exc
import pytest
import requests

from elastic.lab.cloud import LabCloud, LabConfigError

from tests.support.lab import FAST

pytestmark = pytest.mark.integration


def compute(lab, conn, path: str, **headers: str) -> requests.Response:
    return requests.get(f"{lab.url}/lab/compute/v2.1{path}", headers={"X-Auth-Token": conn.auth_token, **headers},
                        timeout=10)


def test_latency_delays_every_request(lab, sdk):
    """latency_seconds holds each answer at least that long."""
    conn = sdk(lab)
    conn.authorize()
    lab.set_faults("lab", latency_seconds=0.2)
    started = time.monotonic()
    list(conn.compute.servers())
    assert time.monotonic() - started >= 0.2


def test_error_rate_answers_500_or_503(lab, sdk):
    """error_rate 1 fails every request with 500 or 503 (HttpException with the status); error_statuses pins it."""
    conn = sdk(lab)
    conn.authorize()
    lab.set_faults("lab", error_rate=1.0)
    with pytest.raises(exc.HttpException) as caught:
        list(conn.compute.servers())
    assert caught.value.status_code in (500, 503)
    lab.set_faults("lab", error_statuses=[500])
    with pytest.raises(exc.HttpException) as caught:
        conn.network.find_network("private")
    assert caught.value.status_code == 500


def test_error_rate_is_a_seeded_fraction(lab, sdk):
    """error_rate 0.5 fails some but not all of 40 requests."""
    conn = sdk(lab)
    conn.authorize()
    lab.set_faults("lab", error_rate=0.5, seed=3)
    statuses = [compute(lab, conn, "/flavors").status_code for _ in range(40)]
    assert 0 < statuses.count(200) < 40 and set(statuses) <= {200, 500, 503}


def test_rate_limit_answers_429_with_integer_retry_after(lab, sdk):
    """Beyond rate_limit_per_second the answer is 429 with an integer Retry-After; the SDK raises HttpException 429."""
    conn = sdk(lab)
    conn.authorize()
    lab.set_faults("lab", rate_limit_per_second=3)
    answers = [compute(lab, conn, "/servers") for _ in range(6)]
    limited = [a for a in answers if a.status_code == 429]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200] and limited
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    assert "overLimit" in limited[0].json()
    with pytest.raises(exc.HttpException) as caught:
        list(conn.compute.servers())
    assert caught.value.status_code == 429


def test_outage_reset_is_a_connection_error(lab, sdk):
    """outage: reset drops connections unanswered (ConnectFailure); clearing it restores service."""
    conn = sdk(lab)
    conn.authorize()
    lab.set_faults("lab", outage="reset")
    with pytest.raises(keystoneauth1.exceptions.ConnectFailure):
        list(conn.compute.servers())
    assert lab.requests("lab")[-1]["status"] is None
    lab.clear_faults("lab")
    assert list(conn.compute.servers()) == []


def test_outage_timeout_holds_requests_and_stop_releases_them(make_lab, sdk):
    """outage: timeout holds a request past the client's timeout; stopping the lab does not wait for the hold."""
    lab = make_lab({"clouds": {"lab": dict(FAST)}})
    conn = sdk(lab, api_timeout=0.3)
    conn.authorize()
    lab.set_faults("lab", outage="timeout", outage_timeout_seconds=30)
    with pytest.raises(keystoneauth1.exceptions.ConnectTimeout):
        list(conn.compute.servers())
    started = time.monotonic()
    lab.stop()
    assert time.monotonic() - started < 5


def test_faults_do_not_touch_the_control_endpoint(make_lab):
    """During an outage /_lab/ still answers: requests, servers, faults merge and clear, reset-requests."""
    lab = make_lab({"clouds": {"lab": {**FAST, "faults": {"outage": "reset"}}}})
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{lab.url}/lab/identity/v3", timeout=5)
    log = requests.get(f"{lab.url}/_lab/requests", timeout=5).json()
    assert log["counts"] == {"GET /identity/v3": 1} and log["requests"][0]["status"] is None
    lab.seed_server("lab", "seeded")
    listed = requests.get(f"{lab.url}/_lab/servers", timeout=5).json()["servers"]["lab"]
    assert [s["name"] for s in listed] == ["seeded"]
    faults = requests.post(f"{lab.url}/_lab/faults/lab", json={"outage": None, "latency_seconds": 0.01},
                           timeout=5).json()
    assert faults["faults"]["outage"] is None and faults["faults"]["latency_seconds"] == 0.01
    assert requests.get(f"{lab.url}/lab/identity/v3", timeout=5).status_code == 200
    bad = requests.post(f"{lab.url}/_lab/faults/lab", json={"no_such_fault": 1}, timeout=5)
    assert bad.status_code == 400 and "no_such_fault" in bad.json()["error"]["message"]
    assert requests.post(f"{lab.url}/_lab/reset-requests", timeout=5).json() == {"ok": True}
    assert requests.get(f"{lab.url}/_lab/requests?cloud=lab", timeout=5).json() == {"requests": [], "counts": {}}
    assert lab.requests() == []


def test_set_faults_validates(lab):
    """Unknown faults and out-of-range values are refused with the key named."""
    with pytest.raises(ValueError, match="no_such"):
        lab.set_faults("lab", no_such=1)
    with pytest.raises(ValueError, match="error_rate"):
        lab.set_faults("lab", error_rate=2)
    with pytest.raises(ValueError, match="outage"):
        lab.set_faults("lab", outage="sometimes")


def test_both_microversion_headers_are_honoured_and_returned(make_lab, sdk):
    """OpenStack-API-Version wins over X-OpenStack-Nova-API-Version; replies carry both; above the cap is 406."""
    lab = make_lab({"clouds": {"lab": {**FAST, "max_microversion": "2.12"}}})
    conn = sdk(lab)
    conn.authorize()
    legacy = compute(lab, conn, "/servers", **{"X-OpenStack-Nova-API-Version": "2.10"})
    assert legacy.status_code == 200 and legacy.headers["OpenStack-API-Version"] == "compute 2.10"
    both = compute(lab, conn, "/servers",
                   **{"OpenStack-API-Version": "compute 2.11", "X-OpenStack-Nova-API-Version": "2.3"})
    assert both.headers["X-OpenStack-Nova-API-Version"] == "2.11"
    assert compute(lab, conn, "/servers").headers["X-OpenStack-Nova-API-Version"] == "2.1"
    assert compute(lab, conn, "/servers", **{"OpenStack-API-Version": "compute latest"}).headers[
        "X-OpenStack-Nova-API-Version"] == "2.12"
    too_new = compute(lab, conn, "/servers", **{"OpenStack-API-Version": "compute 2.13"})
    assert too_new.status_code == 406 and "maximum is 2.12" in too_new.json()["computeFault"]["message"]
    assert compute(lab, conn, "/servers", **{"X-OpenStack-Nova-API-Version": "two"}).status_code == 400


def test_list_filters_follow_the_microversion(lab, sdk):
    """Unknown list filters are ignored before 2.75 and a 400 from 2.75; the flavor view changes at 2.47."""
    conn = sdk(lab)
    conn.authorize()
    lab.seed_server("lab", "s1")
    old = compute(lab, conn, "/servers/detail?bogus=1&tags=x", **{"OpenStack-API-Version": "compute 2.12"})
    assert old.status_code == 200 and len(old.json()["servers"]) == 1  # tags need 2.26: dropped
    assert set(old.json()["servers"][0]["flavor"]) == {"id", "links"}
    new = compute(lab, conn, "/servers/detail?bogus=1", **{"OpenStack-API-Version": "compute 2.96"})
    assert new.status_code == 400 and "bogus" in new.json()["badRequest"]["message"]
    tagged = compute(lab, conn, "/servers/detail?tags=x", **{"OpenStack-API-Version": "compute 2.96"}).json()
    assert tagged["servers"] == []
    view = compute(lab, conn, "/servers/detail", **{"OpenStack-API-Version": "compute 2.96"}).json()["servers"][0]
    assert view["flavor"]["original_name"] == "m1.tiny" and view["pinned_availability_zone"] is None


def test_missing_or_foreign_token_is_a_401(make_lab, sdk):
    """Compute, image and network want a token of their own cloud; version documents do not."""
    lab = make_lab({"clouds": {"a": dict(FAST), "b": dict(FAST)}})
    conn = sdk(lab, "a")
    conn.authorize()
    assert requests.get(f"{lab.url}/a/compute/v2.1/servers", timeout=5).status_code == 401
    token = {"X-Auth-Token": conn.auth_token}
    assert requests.get(f"{lab.url}/b/image/v2/images", headers=token, timeout=5).status_code == 401
    assert requests.get(f"{lab.url}/a/image/v2/images", headers=token, timeout=5).status_code == 200
    assert requests.get(f"{lab.url}/b/compute/v2.1", timeout=5).status_code == 200


def test_config_refuses_addresses_off_loopback_and_unknown_keys():
    """A CIDR outside 127.0.0.0/8, an unknown key or a non-loopback bind address is refused before anything starts."""
    with pytest.raises(LabConfigError, match="127.0.0.0/8"):
        LabCloud({"clouds": {"lab": {"networks": [{"name": "n", "cidr": "10.0.0.0/24"}]}}})
    with pytest.raises(LabConfigError, match="boot_secs"):
        LabCloud({"clouds": {"lab": {"boot_secs": 1}}})
    with pytest.raises(ValueError, match="loopback"):
        LabCloud(host="0.0.0.0")


def test_stop_leaves_no_thread_or_listener_behind(sdk):
    """After stop() no emulator thread is alive and the port no longer accepts connections."""
    lab = LabCloud({"clouds": {"lab": dict(FAST)}}).start()
    conn = sdk(lab)
    list(conn.compute.servers())  # leaves a keep-alive connection open
    url = lab.url
    lab.stop()
    assert [t.name for t in threading.enumerate() if t.name.startswith("lab-cloud")] == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_lab/requests", timeout=2)
