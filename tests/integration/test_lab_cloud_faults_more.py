"""Faults for fault-isolation work, seen through the real openstacksdk: a black-holed API, quota
refused the pre-Juno way (413), Nova's network info cache lagging behind Neutron, credentials
expiring mid-run, an image removed while servers run, /limits usage, and replies lost after the
request was processed."""

from __future__ import annotations

import threading
import time

import keystoneauth1.exceptions
import openstack.exceptions
import pytest
import requests

from tests.support.lab import FAST

pytestmark = pytest.mark.integration


def chain(error: BaseException):
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


# ---- 1. black hole --------------------------------------------------------------------------

def test_blackhole_is_a_read_timeout_and_stop_does_not_wait(make_lab, sdk):
    """outage: blackhole accepts the connection and never answers: api_timeout=2 ends in a read timeout after ~2 s, and
    stop() returns at once while the request is still held."""
    lab = make_lab({"clouds": {"lab": dict(FAST)}})
    conn = sdk(lab, api_timeout=2)
    conn.authorize()
    lab.set_faults("lab", outage="blackhole")
    started = time.monotonic()
    with pytest.raises(keystoneauth1.exceptions.ConnectTimeout) as caught:
        list(conn.compute.servers())
    assert 2 <= time.monotonic() - started < 8  # one or two held requests (version document, list)
    # keystoneauth calls every timeout ConnectTimeout; underneath it is a read timeout: connected, no answer.
    assert any(isinstance(link, requests.exceptions.ReadTimeout) for link in chain(caught.value))
    before = lab.requests("lab")
    assert "GET /servers/detail" not in [r["endpoint"] for r in before]  # still held: not logged yet
    started = time.monotonic()
    lab.stop()
    assert time.monotonic() - started < 2
    # Every request the outage held (the version document and the list, logged in either order as
    # stop() releases them) is logged unanswered.
    held = lab.requests("lab")[len(before):]
    assert "GET /servers/detail" in [r["endpoint"] for r in held] and all(r["status"] is None for r in held)


@pytest.mark.parametrize("outage", ["blackhole", "timeout"])
def test_held_requests_end_when_the_outage_is_cleared(lab, outage):
    """A request held by a blackhole or timeout outage is dropped unanswered as soon as the outage is cleared; later
    requests are served."""
    lab.set_faults("lab", outage=outage, outage_timeout_seconds=60)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["status"] = requests.get(f"{lab.url}/lab/identity/v3", timeout=30).status_code
        except requests.ConnectionError as error:
            outcome["error"] = error

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    assert caller.is_alive()  # held
    started = time.monotonic()
    lab.clear_faults("lab")
    caller.join(5)
    assert not caller.is_alive() and time.monotonic() - started < 1
    assert "error" in outcome and lab.requests("lab")[-1]["status"] is None
    assert requests.get(f"{lab.url}/lab/identity/v3", timeout=5).status_code == 200


# ---- 2. quota refused as pre-Juno Nova did (413) -------------------------------------------------

def boot(conn, name: str, **extra):
    flavor = conn.compute.find_flavor("m1.small")
    image = conn.image.find_image("debian-12")
    network = conn.network.find_network("private")
    return conn.compute.create_server(name=name, flavor_id=flavor.id, image_id=image.id,
                                      networks=[{"uuid": network.id}], **extra)


def test_quota_status_413_refuses_like_pre_juno_nova(make_lab, sdk):
    """With quota_status 413 (here from config) an over-quota create is 413 overLimit with Retry-After: 0 in header and
    body and Havana's message; 403 is the default."""
    lab = make_lab({"clouds": {"old": {**FAST, "quotas": {"instances": 1}, "faults": {"quota_status": 413}},
                               "new": {**FAST, "quotas": {"instances": 1}}}})
    old, new = sdk(lab, "old"), sdk(lab, "new")
    boot(old, "n1")
    with pytest.raises(openstack.exceptions.HttpException) as caught:
        boot(old, "n2")
    assert caught.value.status_code == 413
    assert caught.value.response.headers["Retry-After"] == "0"
    assert caught.value.response.json() == {"overLimit": {
        "code": 413, "message": "Quota exceeded for instances: Requested 1, but already used 1 of 1 instances",
        "retryAfter": "0"}}
    too_much_metadata = {f"k{i}": "v" for i in range(129)}
    with pytest.raises(openstack.exceptions.HttpException) as caught:
        boot(old, "n3", metadata=too_much_metadata)
    assert caught.value.status_code == 413 and "metadata items" in caught.value.response.json()["overLimit"]["message"]
    boot(new, "n1")
    with pytest.raises(openstack.exceptions.HttpException) as caught:
        boot(new, "n2")
    assert caught.value.status_code == 403 and "Retry-After" not in caught.value.response.headers
    assert caught.value.response.json()["forbidden"]["message"].startswith("Quota exceeded for instances: Requested 1")
    assert lab.set_faults("new", quota_status=413)["quota_status"] == 413
    with pytest.raises(openstack.exceptions.HttpException) as caught:
        boot(new, "n2")
    assert caught.value.status_code == 413
    with pytest.raises(ValueError, match="quota_status"):
        lab.set_faults("new", quota_status=500)


# ---- 3. Nova's network info cache behind Neutron -----------------------------------------------

def floating(server) -> list[str]:
    return [a["addr"] for entries in (server.addresses or {}).values() for a in entries
            if a.get("OS-EXT-IPS:type") == "floating"]


def test_floating_ip_cache_lag_hides_floating_ips_from_nova_not_neutron(lab, sdk, eventually):
    """With floating_ip_cache_lag true Nova's show and list detail omit a floating IP Neutron has associated; a number
    shows it that many seconds after association; clearing shows it."""
    conn = sdk(lab)
    server = conn.compute.wait_for_server(boot(conn, "n1"), wait=10, interval=0.05)
    port = next(iter(conn.network.ports(device_id=server.id)))
    public = conn.network.find_network("public")
    lab.set_faults("lab", floating_ip_cache_lag=True)
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert [i.floating_ip_address for i in conn.network.ips(port_id=port.id)] == [fip.floating_ip_address]
    assert conn.network.get_ip(fip.id).fixed_ip_address == port.fixed_ips[0]["ip_address"]
    assert [p.id for p in conn.network.ports(device_id=server.id)] == [port.id]
    assert floating(conn.compute.get_server(server.id)) == []
    assert floating(next(iter(conn.compute.servers(details=True)))) == []
    assert fip.floating_ip_address in str(lab.servers("lab")[0]["addresses"])  # the lab's own view is the truth
    lab.clear_faults("lab")
    assert floating(conn.compute.get_server(server.id)) == [fip.floating_ip_address]
    conn.network.update_ip(fip, port_id=None)
    lab.set_faults("lab", floating_ip_cache_lag=0.5)
    conn.network.update_ip(fip, port_id=port.id)
    assert floating(conn.compute.get_server(server.id)) == []
    eventually(lambda: floating(conn.compute.get_server(server.id)) == [fip.floating_ip_address], timeout=3)


# ---- 4. credentials expiring mid-run -------------------------------------------------------------

def password_auth(lab, cloud: str = "lab") -> requests.Response:
    auth = lab.clouds[cloud].config.auth
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": auth["username"], "password": auth["password"], "domain": {"name": auth["user_domain_name"]}}}},
        "scope": {"project": {"name": auth["project_name"], "domain": {"name": auth["project_domain_name"]}}}}}
    return requests.post(f"{lab.auth_url(cloud)}/auth/tokens", json=body, timeout=5)


def test_expired_credentials_fail_every_token_and_every_new_authentication(lab, sdk):
    """expire_credentials: old tokens get 401 from every service, POST /v3/auth/tokens is 401 with Keystone's body, the
    SDK raises Unauthorized; restore_credentials lets the SDK re-authenticate, the old token stays revoked."""
    conn = sdk(lab)
    conn.authorize()
    old_token = conn.auth_token
    lab.expire_credentials("lab")
    assert lab.faults("lab")["auth_fails"] is True
    for path in ("/compute/v2.1/servers", "/image/v2/images", "/network/v2.0/networks"):
        answer = requests.get(f"{lab.url}/lab{path}", headers={"X-Auth-Token": old_token}, timeout=5)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Keystone uri=")
        assert answer.json()["error"]["code"] == 401
    refused = password_auth(lab)
    assert refused.status_code == 401 and "X-Subject-Token" not in refused.headers
    assert refused.json() == {"error": {"code": 401, "title": "Unauthorized",
                                        "message": "The request you have made requires authentication."}}
    assert refused.headers["WWW-Authenticate"] == f'Keystone uri="{lab.url}/lab/identity"'
    with pytest.raises(keystoneauth1.exceptions.Unauthorized):
        list(conn.compute.servers())
    lab.restore_credentials("lab")
    assert list(conn.compute.servers()) == [] and conn.auth_token != old_token
    assert requests.get(f"{lab.url}/lab/compute/v2.1/servers", headers={"X-Auth-Token": old_token},
                        timeout=5).status_code == 401


def test_revoked_tokens_are_401_and_the_sdk_reauthenticates(lab, sdk):
    """revoke_tokens: the old token is 401 everywhere, authentication still works, so the SDK's next call
    re-authenticates and succeeds."""
    conn = sdk(lab)
    conn.authorize()
    old_token = conn.auth_token
    assert lab.revoke_tokens("lab") == 1
    assert requests.get(f"{lab.url}/lab/network/v2.0/ports", headers={"X-Auth-Token": old_token},
                        timeout=5).status_code == 401
    lab.reset_requests()
    assert list(conn.network.ports()) == []
    assert lab.request_counts("lab")["POST /identity/v3/auth/tokens"] == 1 and conn.auth_token != old_token


def test_auth_fails_from_the_control_endpoint(lab, sdk):
    """POST /_lab/faults/<cloud> {"auth_fails": true} refuses authentication; DELETE clears it."""
    requests.post(f"{lab.url}/_lab/faults/lab", json={"auth_fails": True}, timeout=5).raise_for_status()
    assert password_auth(lab).status_code == 401
    requests.delete(f"{lab.url}/_lab/faults/lab", timeout=5).raise_for_status()
    assert password_auth(lab).status_code == 201
    assert list(sdk(lab).compute.servers()) == []


# ---- 5. an image removed while servers run -------------------------------------------------------

def test_removed_image_fails_creates_the_way_nova_does(lab, sdk):
    """After remove_image a create with the old image id is Nova's 400 badRequest "Can not find requested image" (boot
    from volume: Nova's InvalidBDMImage), find_image by name finds nothing, and a server already running from it still
    shows it."""
    conn = sdk(lab)
    running = conn.compute.wait_for_server(boot(conn, "n1"), wait=10, interval=0.05)
    image_id = conn.image.find_image("debian-12").id
    flavor_id = conn.compute.find_flavor("m1.small").id
    network_id = conn.network.find_network("private").id
    lab.remove_image("lab", "debian-12")
    assert conn.image.find_image("debian-12") is None
    assert list(conn.image.images(name="debian-12")) == []
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.image.get_image(image_id)
    with pytest.raises(openstack.exceptions.BadRequestException) as caught:
        conn.compute.create_server(name="n2", flavor_id=flavor_id, image_id=image_id, networks=[{"uuid": network_id}])
    assert caught.value.response.json() == {"badRequest": {"code": 400, "message": "Can not find requested image"}}
    with pytest.raises(openstack.exceptions.BadRequestException) as caught:
        conn.compute.create_server(name="n3", flavor_id=flavor_id, image_id="", networks=[{"uuid": network_id}],
                                   block_device_mapping=[{"boot_index": 0, "uuid": image_id, "source_type": "image",
                                                          "destination_type": "volume", "volume_size": 10,
                                                          "delete_on_termination": True}])
    assert caught.value.response.json()["badRequest"]["message"] == (
        f"Block Device Mapping is Invalid: failed to get image {image_id}.")
    assert [s["name"] for s in lab.servers("lab")] == ["n1"]
    shown = conn.compute.get_server(running.id)
    assert shown.status == "ACTIVE" and shown.image.id == image_id


# ---- 6. /limits usage ----------------------------------------------------------------------------

def test_limits_usage_follows_creates_and_deletes(lab, sdk, eventually):
    """GET /limits totalInstancesUsed, totalCoresUsed and totalRAMUsed count each server from its create (BUILD, ACTIVE,
    ERROR alike) until its delete completes."""
    conn = sdk(lab)
    lab.set_quota("lab", instances=5, cores=10, ram=20480)

    def used():
        absolute = conn.compute.get_limits().absolute
        return (absolute.instances_used, absolute.total_cores_used, absolute.total_ram_used,
                absolute.instances, absolute.total_cores, absolute.total_ram)

    assert used() == (0, 0, 0, 5, 10, 20480)
    lab.set_faults("lab", stuck_in_build=True)
    small = boot(conn, "small")  # m1.small: 1 vCPU, 2048 MB
    assert used() == (1, 1, 2048, 5, 10, 20480)  # counted while still in BUILD
    lab.clear_faults("lab")
    medium = conn.compute.create_server(name="medium", flavor_id=conn.compute.find_flavor("m1.medium").id,
                                        image_id=conn.image.find_image("debian-12").id,
                                        networks=[{"uuid": conn.network.find_network("private").id}])
    lab.set_faults("lab", no_valid_host_flavors=["m1.small"])
    broken = boot(conn, "broken")
    assert conn.compute.wait_for_server(broken, status="ERROR", failures=[], wait=10, interval=0.05).status == "ERROR"
    assert used() == (3, 4, 8192, 5, 10, 20480)
    conn.compute.delete_server(medium)
    eventually(lambda: used()[:3] == (2, 2, 4096))
    for server in (small, broken):
        conn.compute.delete_server(server)
    eventually(lambda: used()[:3] == (0, 0, 0))


def test_new_faults_validate_and_show_in_the_control_endpoint(lab):
    """quota_status, floating_ip_cache_lag, auth_fails and outage: blackhole are checked with the key named, and GET
    /_lab/faults shows them."""
    for bad in ({"quota_status": 500}, {"quota_status": True}, {"floating_ip_cache_lag": -1},
                {"floating_ip_cache_lag": "yes"}, {"auth_fails": 1}, {"outage": "black hole"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            lab.set_faults("lab", **bad)
    lab.set_faults("lab", floating_ip_cache_lag=2, outage="blackhole")
    shown = requests.get(f"{lab.url}/_lab/faults/lab", timeout=5).json()["faults"]
    assert shown["floating_ip_cache_lag"] == 2.0 and shown["outage"] == "blackhole"
    assert shown["quota_status"] == 403 and shown["auth_fails"] is False


# ---- 8. replies lost after the work was done -------------------------------------------------------

def test_lost_create_reply_leaves_a_server_behind(lab, sdk, eventually):
    """reply_lost_rate=1 on POST: the SDK's create fails with a connection error, yet the server exists and boots; GETs
    and DELETEs are still answered."""
    conn = sdk(lab)
    conn.authorize()  # the token's POST comes before the fault
    boot(conn, "warmup")  # find_* and a first create: every lookup cached on the connection
    lab.set_faults("lab", reply_lost_rate=1.0, reply_lost_methods=["POST"], seed=3)
    with pytest.raises(keystoneauth1.exceptions.ConnectFailure) as caught:  # not retried: a POST is not idempotent
        boot(conn, "lost-1")
    assert any(isinstance(link, ConnectionResetError) for link in chain(caught.value))
    left = [s for s in lab.servers("lab") if s["name"] == "lost-1"]
    assert len(left) == 1  # processed once, answered never
    eventually(lambda: conn.compute.get_server(left[0]["id"]).status == "ACTIVE")
    (record,) = [r for r in lab.requests("lab") if r["endpoint"] == "POST /servers" and r.get("reply_lost")]
    assert record["status"] == 202  # what Nova answered, never delivered
    conn.compute.delete_server(left[0]["id"])  # DELETE not in reply_lost_methods: answered
    eventually(lambda: not [s for s in lab.servers("lab") if s["name"] == "lost-1"])


def test_lost_delete_reply_still_deletes(lab, sdk, eventually):
    """reply_lost on DELETE: the delete raises a connection error and the server is deleted all the same."""
    conn = sdk(lab)
    server = boot(conn, "doomed")
    conn.compute.wait_for_server(server, wait=10, interval=0.05)
    lab.set_faults("lab", reply_lost_rate=1.0, reply_lost_methods="delete")
    with pytest.raises(keystoneauth1.exceptions.ConnectFailure):
        conn.compute.delete_server(server)
    eventually(lambda: not [s for s in lab.servers("lab") if s["name"] == "doomed"])


def test_reply_lost_rate_is_seeded_and_spares_other_methods(lab):
    """reply_lost_rate=0.5 loses about half the matching requests, the same ones for the same seed, and never a request
    of another method."""
    def lost_pattern() -> list[bool]:
        lab.set_faults("lab", reply_lost_rate=0.5, reply_lost_methods=["GET"], seed=11)
        pattern = []
        for _ in range(40):
            try:
                pattern.append(requests.get(f"{lab.url}/lab/identity/v3", timeout=5).status_code != 200)
            except requests.ConnectionError:
                pattern.append(True)
        lab.clear_faults("lab")
        return pattern

    first = lost_pattern()
    assert 8 <= sum(first) <= 32 and lost_pattern() == first
    lab.set_faults("lab", reply_lost_rate=1.0, reply_lost_methods=["DELETE"])
    assert all(requests.get(f"{lab.url}/lab/identity/v3", timeout=5).status_code == 200 for _ in range(5))


def test_reply_lost_faults_validate_and_show(lab):
    """reply_lost_rate and reply_lost_methods are checked with the key named, and GET /_lab/faults shows them."""
    for bad in ({"reply_lost_rate": 1.5}, {"reply_lost_rate": True}, {"reply_lost_methods": ["FETCH"]},
                {"reply_lost_methods": [1]}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            lab.set_faults("lab", **bad)
    lab.set_faults("lab", reply_lost_rate=0.25, reply_lost_methods=["post", "DELETE"])
    shown = requests.get(f"{lab.url}/_lab/faults/lab", timeout=5).json()["faults"]
    assert shown["reply_lost_rate"] == 0.25 and shown["reply_lost_methods"] == ["POST", "DELETE"]
    assert lab.clear_faults("lab") is None and lab.faults("lab")["reply_lost_methods"] == []
