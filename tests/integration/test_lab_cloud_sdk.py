"""The lab emulator driven by the real openstacksdk over HTTP: auth, discovery, the server
lifecycle, listing, errors, quotas, floating IPs, several clouds, hooks."""

from __future__ import annotations

import base64

import keystoneauth1.exceptions
import openstack
import openstack.exceptions as exc
import pytest

from tests.support.lab import FAST

pytestmark = pytest.mark.integration


def boot(conn, name: str, flavor: str = "m1.small", network: str = "private", **extra):
    """POST /servers through the proxy layer, names resolved as our cloud adapter does."""
    attrs = {"name": name, "flavor_id": conn.compute.find_flavor(flavor, ignore_missing=False).id,
             "image_id": conn.image.find_image("debian-12", ignore_missing=False).id,
             "networks": [{"uuid": conn.network.find_network(network, ignore_missing=False).id}], **extra}
    return conn.compute.create_server(**attrs)


def compute_requests(lab, endpoint: str, cloud: str = "lab") -> list[dict]:
    return [r for r in lab.requests(cloud) if r["endpoint"] == endpoint]


def test_password_auth_gives_a_catalog_of_four_services(lab, sdk):
    """Password auth through clouds.yaml issues a token whose catalog has identity, compute, image, network."""
    conn = sdk(lab)
    conn.authorize()
    types = {entry["type"] for entry in conn.session.auth.get_access(conn.session).service_catalog.catalog}
    assert types == {"identity", "compute", "image", "network"}
    assert lab.request_counts()["POST /identity/v3/auth/tokens"] == 1


def test_application_credential_auth(make_lab):
    """An application credential from the config authenticates; a wrong secret does not."""
    lab = make_lab({"clouds": {"lab": {**FAST, "application_credentials": [{"id": "ac1", "secret": "s3cret"}]}}})
    conn = openstack.connect(auth_url=lab.auth_url("lab"), auth_type="v3applicationcredential", region_name="RegionOne",
                             application_credential_id="ac1", application_credential_secret="s3cret")
    try:
        assert "m1.small" in [f.name for f in conn.compute.flavors()]
    finally:
        conn.close()
    wrong = openstack.connect(auth_url=lab.auth_url("lab"), auth_type="v3applicationcredential",
                              region_name="RegionOne", application_credential_id="ac1",
                              application_credential_secret="nope")
    with pytest.raises(keystoneauth1.exceptions.Unauthorized):
        list(wrong.compute.flavors())
    wrong.close()


def test_bad_password_is_a_401(lab):
    """A wrong password gets Keystone's 401: SDKException "(HTTP 401)" from authorize, Unauthorized from a proxy
    call."""
    conn = openstack.connect(auth_url=lab.auth_url("lab"), username="demo", password="wrong", project_name="demo",
                             user_domain_name="Default", project_domain_name="Default", region_name="RegionOne")
    with pytest.raises(exc.SDKException, match=r"HTTP 401"):
        conn.authorize()
    with pytest.raises(keystoneauth1.exceptions.Unauthorized) as caught:
        list(conn.compute.servers())
    assert caught.value.http_status == 401
    conn.close()
    assert {r["status"] for r in compute_requests(lab, "POST /identity/v3/auth/tokens")} == {401}


def test_expired_token_is_refused_and_the_sdk_reauthenticates(make_lab, sdk):
    """With a 1 s token TTL the SDK keeps re-authenticating (keystoneauth renews tokens near expiry) and succeeds."""
    lab = make_lab({"clouds": {"lab": {**FAST, "token_ttl_seconds": 1}}})
    conn = sdk(lab)
    for _ in range(3):
        list(conn.compute.servers())
    assert lab.request_counts()["POST /identity/v3/auth/tokens"] >= 3


@pytest.mark.parametrize("cap", ["2.12", "2.96"])
def test_discovery_negotiates_the_clouds_cap(make_lab, sdk, cap):
    """The SDK discovers the cap from the version document and sends it in both microversion headers."""
    lab = make_lab({"clouds": {"lab": {**FAST, "max_microversion": cap}}})
    conn = sdk(lab)
    list(conn.compute.servers())
    (listing,) = compute_requests(lab, "GET /servers/detail")
    assert listing["headers"]["OpenStack-API-Version"] == f"compute {cap}"
    assert listing["headers"]["X-OpenStack-Nova-API-Version"] == cap
    assert listing["microversion"] == cap
    doc = conn.compute.get("/").json()
    assert doc["version"]["version"] == cap and doc["version"]["min_version"] == "2.1"


def test_create_wait_list_delete(lab, sdk):
    """Create -> BUILD -> ACTIVE with a loopback fixed IP; delete -> task_state deleting -> 404."""
    conn = sdk(lab)
    created = boot(conn, "node-1", metadata={"cluster": "c1"})
    server = conn.compute.get_server(created.id)
    assert server.status == "BUILD" and server.addresses == {}
    server = conn.compute.wait_for_server(server, interval=0.02, wait=5)
    (address,) = server.addresses["private"]
    assert address["OS-EXT-IPS:type"] == "fixed" and address["version"] == 4
    assert address["addr"].startswith("127.10.") and address["OS-EXT-IPS-MAC:mac_addr"].startswith("fa:16:3e:")
    assert server.vm_state == "active" and server.task_state is None and server.metadata == {"cluster": "c1"}
    assert [s.name for s in conn.compute.servers(details=True)] == ["node-1"]
    conn.compute.delete_server(server)
    assert conn.compute.get_server(server.id).task_state == "deleting"
    conn.compute.wait_for_delete(server, interval=0.02, wait=5)
    with pytest.raises(exc.NotFoundException):
        conn.compute.get_server(server.id)
    assert compute_requests(lab, "DELETE /servers/{id}")[0]["status"] == 204


def test_name_filter_is_a_regex_search(lab, sdk):
    """`name` filters like Nova's REGEXP: "bob" also matches "bobby"; anchors make it exact."""
    for name in ("bob", "bobby", "alice"):
        lab.seed_server("lab", name)
    conn = sdk(lab)
    assert sorted(s.name for s in conn.compute.servers(name="bob")) == ["bob", "bobby"]
    assert [s.name for s in conn.compute.servers(name="^bob$")] == ["bob"]
    assert [s.name for s in conn.compute.servers(status="ACTIVE", name="ali")] == ["alice"]


def test_sdk_follows_pagination_links_over_250_servers(make_lab, sdk):
    """With a page size of 100 the SDK follows servers_links: 250 servers, 3 pages, newest first."""
    lab = make_lab({"clouds": {"lab": {**FAST, "max_limit": 100}}})
    for i in range(250):
        lab.seed_server("lab", f"n{i:03d}", age_seconds=1000 - i)
    conn = sdk(lab)
    names = [s.name for s in conn.compute.servers(details=True)]
    assert len(names) == 250 == len(set(names)) and names[0] == "n249"
    pages = compute_requests(lab, "GET /servers/detail")
    assert len(pages) == 3 and "marker=" in pages[1]["path"]
    assert len(list(conn.compute.servers(details=False, limit=40))) == 250


def test_a_page_whose_last_server_was_deleted_since_goes_on_after_it(make_lab, sdk, eventually):
    """Nova still finds a deleted server as a marker (read_deleted='yes' until archived): a list
    whose page ended on a server deleted before the next page is fetched goes on after it. A marker
    Nova never had is a 400."""
    lab = make_lab({"clouds": {"lab": {**FAST, "max_limit": 10}}})
    for i in range(15):
        lab.seed_server("lab", f"n{i:02d}", age_seconds=1000 - i)
    conn = sdk(lab)
    first = conn.compute.get("/servers/detail").json()
    marker = first["servers"][-1]["id"]
    conn.compute.delete_server(marker)
    eventually(lambda: marker not in {s.id for s in conn.compute.servers()})
    rest = conn.compute.get(f"/servers/detail?marker={marker}").json()["servers"]
    assert [s["name"] for s in rest] == [f"n{i:02d}" for i in range(4, -1, -1)]
    assert conn.compute.get("/servers/detail?marker=never-was").status_code == 400


def test_error_server_carries_the_no_valid_host_fault(make_lab, sdk):
    """A flavor with no valid host ends in ERROR with Nova's fault message and code 500."""
    lab = make_lab({"clouds": {"lab": {**FAST, "faults": {"no_valid_host_flavors": ["m1.small"]}}}})
    conn = sdk(lab)
    server = boot(conn, "doomed")
    with pytest.raises(exc.ResourceFailure):
        conn.compute.wait_for_server(server, interval=0.02, wait=5)
    server = conn.compute.get_server(server.id)
    assert server.status == "ERROR" and server.addresses == {}
    assert server.fault["code"] == 500
    assert server.fault["message"] == "No valid host was found. There are not enough hosts available."
    assert conn.compute.wait_for_server(boot(conn, "fine", flavor="m1.tiny"), interval=0.02, wait=5).status == "ACTIVE"


def test_no_valid_host_fraction_fails_some_boots(make_lab, sdk, eventually):
    """no_valid_host_fraction 0.5 (seeded) sends some of 20 boots to ERROR and the rest to ACTIVE."""
    lab = make_lab({"clouds": {"lab": {**FAST, "faults": {"no_valid_host_fraction": 0.5, "seed": 7}}}})
    conn = sdk(lab)
    for i in range(20):
        boot(conn, f"n{i}")
    statuses = eventually(lambda: (lambda s: s if "BUILD" not in s else None)(
        [s["status"] for s in lab.servers("lab")]))
    assert 0 < statuses.count("ERROR") < 20 and statuses.count("ERROR") + statuses.count("ACTIVE") == 20


def test_stuck_in_build_holds_servers_until_cleared(lab, sdk, eventually):
    """stuck_in_build keeps a server in BUILD past boot_seconds; clearing the fault lets it boot."""
    conn = sdk(lab)
    lab.set_faults("lab", stuck_in_build=True)
    server = boot(conn, "stuck")
    with pytest.raises(exc.ResourceTimeout):
        conn.compute.wait_for_server(server, interval=0.02, wait=0.5)  # 10x boot_seconds
    assert conn.compute.get_server(server.id).status == "BUILD"
    lab.clear_faults("lab")
    assert conn.compute.wait_for_server(server, interval=0.02, wait=5).status == "ACTIVE"


@pytest.mark.parametrize("change, message", [
    ({"flavor_id": "no-such-flavor"}, "Invalid flavorRef provided."),
    ({"image_id": "no-such-image"}, "Can not find requested image"),
    ({"networks": [{"uuid": "00000000-0000-0000-0000-000000000000"}]}, "could not be found"),
    ({"networks": None}, "'networks' is a required property"),
    ({"key_name": "nokey"}, "Invalid key_name provided."),
    ({"security_groups": [{"name": "nogroup"}]}, "Security group nogroup not found"),
    ({"user_data": "not base64!"}, "is not a 'base64'"),
    ({"user_data": base64.b64encode(b"x" * 49152).decode() + "AAAA"}, "is too long"),
    ({"metadata": {"k": "v" * 256}}, "is too long"),
    ({"metadata": {"k": 1}}, "is not of type 'string'"),
    ({"name": ""}, "name"),
])
def test_invalid_creates_are_400(lab, sdk, change, message):
    """Each invalid create is a 400 (BadRequestException) with Nova's message, and creates nothing."""
    conn = sdk(lab)
    attrs = {"name": "bad", "flavor_id": conn.compute.find_flavor("m1.small").id,
             "image_id": conn.image.find_image("debian-12").id,
             "networks": [{"uuid": conn.network.find_network("private").id}]}
    attrs.update(change)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    with pytest.raises(exc.BadRequestException, match=message):
        conn.compute.create_server(**attrs)
    assert lab.servers("lab") == []


def test_user_data_at_nova_limit_is_accepted(lab, sdk):
    """The longest valid base64 user_data under Nova's 65535-character limit boots, and is kept as sent."""
    conn = sdk(lab)
    user_data = base64.b64encode(b"z" * (65532 // 4 * 3)).decode()
    assert len(user_data) == 65532
    boot(conn, "big", user_data=user_data)
    assert lab.servers("lab")[0]["user_data"] == user_data


def test_not_found_and_locked_conflict(lab, sdk):
    """A missing server is a 404 (NotFoundException); deleting a locked one is a 409 (ConflictException)."""
    conn = sdk(lab)
    with pytest.raises(exc.NotFoundException, match="could not be found"):
        conn.compute.get_server("8e6b5b8c-0000-0000-0000-000000000000")
    server = conn.compute.wait_for_server(boot(conn, "locked"), interval=0.02, wait=5)
    conn.compute.lock_server(server)
    with pytest.raises(exc.ConflictException, match="is locked"):
        conn.compute.delete_server(server)
    conn.compute.unlock_server(server)
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.02, wait=5)


@pytest.mark.parametrize("quotas, flavor, message", [
    ({"instances": 2}, "m1.small", "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances"),
    ({"cores": 6}, "m1.large", "Quota exceeded for cores: Requested 4, but already used 8 of 6 cores"),
    ({"ram": 5000}, "m1.small", "Quota exceeded for ram: Requested 2048, but already used 4096 of 5000 ram"),
])
def test_quota_is_a_403_with_novas_message(lab, sdk, quotas, flavor, message):
    """Beyond a quota, POST /servers is 403 (ForbiddenException) with Nova's counting-quota message."""
    conn = sdk(lab)
    boot(conn, "a", flavor=flavor)
    boot(conn, "b", flavor=flavor)
    lab.set_quota("lab", **quotas)
    with pytest.raises(exc.ForbiddenException) as caught:
        boot(conn, "c", flavor=flavor)
    assert caught.value.status_code == 403 and message in str(caught.value)
    (refused,) = [r for r in compute_requests(lab, "POST /servers") if r["status"] == 403]
    assert len(lab.servers("lab")) == 2 and refused


def test_limits_report_quota_and_usage(lab, sdk):
    """GET /limits reports the quotas and what the servers use."""
    conn = sdk(lab)
    boot(conn, "a", flavor="m1.medium")
    absolute = conn.compute.get_limits().absolute
    assert (absolute.instances, absolute.instances_used) == (100, 1)
    assert (absolute.total_cores, absolute.total_cores_used) == (400, 2)
    assert (absolute.total_ram, absolute.total_ram_used) == (1024000, 4096)


def test_server_metadata_endpoints(lab, sdk):
    """Metadata can be merged (POST), replaced (PUT), read and deleted per key."""
    conn = sdk(lab)
    server = boot(conn, "meta", metadata={"a": "1"})
    conn.compute.set_server_metadata(server, b="2")
    assert conn.compute.get_server_metadata(server).metadata == {"a": "1", "b": "2"}
    conn.compute.delete_server_metadata(server, ["a"])
    assert conn.compute.get_server(server.id).metadata == {"b": "2"}
    reply = conn.compute.put(f"/servers/{server.id}/metadata", json={"metadata": {"c": "3"}})
    assert reply.status_code == 200 and reply.json() == {"metadata": {"c": "3"}}
    assert lab.servers("lab")[0]["metadata"] == {"c": "3"}


def test_floating_ips_create_associate_list_delete(make_lab, sdk):
    """A floating IP from the external net (127.20/16) associates with the server's port and shows in its addresses."""
    lab = make_lab({"clouds": {"lab": {**FAST, "quotas": {"floating_ips": 1}}}})
    conn = sdk(lab)
    server = conn.compute.wait_for_server(boot(conn, "fip"), interval=0.02, wait=5)
    (port,) = conn.network.ports(device_id=server.id)
    assert port.fixed_ips[0]["ip_address"] == server.addresses["private"][0]["addr"]
    public = conn.network.find_network("public")
    ip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    assert ip.floating_ip_address.startswith("127.20.") and ip.fixed_ip_address == port.fixed_ips[0]["ip_address"]
    assert [i.id for i in conn.network.ips(port_id=port.id)] == [ip.id]
    kinds = {a["OS-EXT-IPS:type"]: a["addr"] for a in conn.compute.get_server(server.id).addresses["private"]}
    assert kinds == {"fixed": port.fixed_ips[0]["ip_address"], "floating": ip.floating_ip_address}
    with pytest.raises(exc.ConflictException, match="Quota exceeded"):
        conn.network.create_ip(floating_network_id=public.id)
    with pytest.raises(exc.BadRequestException, match="not a valid external network"):
        conn.network.create_ip(floating_network_id=conn.network.find_network("private").id)
    conn.network.delete_ip(ip)
    assert list(conn.network.ips()) == []
    second = conn.network.create_ip(floating_network_id=public.id)
    conn.network.update_ip(second, port_id=port.id)
    assert conn.network.get_ip(second.id).port_id == port.id


def test_floating_ip_description_is_stored_returned_filtered_and_updated(lab, sdk):
    """Neutron's standard-attr-description: a floating IP's description is stored as given, returned
    by show and list, matched exactly by the `description` filter (with port_id and
    floating_network_id filters beside it), changed by PUT; the extensions list names it."""
    conn = sdk(lab)
    aliases = {e.alias for e in conn.network.extensions()}
    assert {"standard-attr-description", "standard-attr-timestamp", "fip-port-details"} <= aliases
    server = conn.compute.wait_for_server(boot(conn, "fip-d"), interval=0.02, wait=5)
    (port,) = conn.network.ports(device_id=server.id)
    public = conn.network.find_network("public")
    ours = conn.network.create_ip(floating_network_id=public.id, port_id=port.id,
                                  description="elastic cluster=a node=n")
    other = conn.network.create_ip(floating_network_id=public.id)
    assert ours.description == "elastic cluster=a node=n" and other.description == ""
    assert conn.network.get_ip(ours.id).description == "elastic cluster=a node=n"
    assert [i.id for i in conn.network.ips(description="elastic cluster=a node=n")] == [ours.id]
    assert [i.id for i in conn.network.ips(description="elastic cluster=a")] == []
    assert [i.id for i in conn.network.ips(port_id=port.id, floating_network_id=public.id)] == [ours.id]
    assert ours.port_details["device_id"] == server.id and other.port_details is None
    conn.network.update_ip(other, description="web")
    assert conn.network.get_ip(other.id).description == "web" and conn.network.get_ip(other.id).port_id is None
    with pytest.raises(exc.BadRequestException, match="description"):
        conn.network.create_ip(floating_network_id=public.id, description="x" * 256)


def test_a_floating_ip_is_disassociated_not_deleted_when_its_server_goes(lab, sdk, eventually):
    """As Neutron does when Nova deletes a server's port: the floating IP stays allocated (and counted
    against quota) with port_id, fixed_ip_address and port_details null and status DOWN; its
    description and created_at stay."""
    conn = sdk(lab)
    server = conn.compute.wait_for_server(boot(conn, "fip-gone"), interval=0.02, wait=5)
    (port,) = conn.network.ports(device_id=server.id)
    public = conn.network.find_network("public")
    ip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id, description="mark")
    assert ip.status == "ACTIVE" and ip.created_at
    conn.compute.delete_server(server.id)
    eventually(lambda: not list(conn.network.ports(device_id=server.id)))
    after = conn.network.get_ip(ip.id)
    assert (after.port_id, after.fixed_ip_address, after.port_details, after.status) == (None, None, None, "DOWN")
    assert (after.description, after.created_at, after.floating_ip_address) == ("mark", ip.created_at,
                                                                               ip.floating_ip_address)
    assert [i.id for i in conn.network.ips(description="mark")] == [ip.id]


def test_two_clouds_with_different_caps_are_independent(make_lab, sdk):
    """Two clouds on one port: each its own cap, servers and flavors."""
    lab = make_lab({"clouds": {"east": {**FAST, "max_microversion": "2.12"},
                               "west": {**FAST, "flavors": [{"name": "w1", "vcpus": 1, "ram": 1024, "disk": 10}]}}})
    east, west = sdk(lab, "east"), sdk(lab, "west")
    boot(east, "e1")
    boot(west, "w-node", flavor="w1")
    assert [s.name for s in east.compute.servers()] == ["e1"]
    assert [s.name for s in west.compute.servers()] == ["w-node"]
    assert east.compute.find_flavor("w1") is None
    assert compute_requests(lab, "GET /servers/detail", "east")[0]["microversion"] == "2.12"
    assert compute_requests(lab, "GET /servers/detail", "west")[0]["microversion"] == "2.96"


def test_hooks_fire_with_name_id_and_address(make_lab, sdk, eventually, tmp_path):
    """on_active/on_deleted run (callables and config commands) with cloud, name, id and address; a raising hook is
    survived."""
    calls = []

    def on_active(cloud, name, server_id, address):
        calls.append(("active", cloud, name, server_id, address))
        raise RuntimeError("a broken hook must not stop the lifecycle")

    record = tmp_path / "hooks.log"
    command = f'echo "$ELASTIC_LAB_HOOK $ELASTIC_LAB_SERVER_NAME $ELASTIC_LAB_SERVER_ADDRESS" >> {record}'
    lab = make_lab({"clouds": {"lab": {**FAST, "hooks": {"on_active": command, "on_deleted": ["sh", "-c", command]}}}},
                   on_active=on_active, on_deleted=lambda *args: calls.append(("deleted", *args)))
    conn = sdk(lab)
    server = boot(conn, "hooked")
    eventually(lambda: calls)
    (_, cloud, name, server_id, address) = calls[0]
    assert (cloud, name, server_id) == ("lab", "hooked", server.id) and address.startswith("127.10.")
    conn.compute.delete_server(server)
    eventually(lambda: len(calls) == 2)
    assert calls[1] == ("deleted", "lab", "hooked", server.id, address)
    assert lab.wait_for_hooks(5)
    assert record.read_text().splitlines() == [f"on_active hooked {address}", f"on_deleted hooked {address}"]


def test_boot_from_volume_shows_image_as_empty_string(lab, sdk):
    """A boot from a volume (imageRef "", block_device_mapping_v2) is accepted; Nova shows its image as ""."""
    conn = sdk(lab)
    image = conn.image.find_image("debian-12")
    server = boot(conn, "bfv", image_id="", block_device_mapping=[{
        "boot_index": 0, "uuid": image.id, "source_type": "image", "destination_type": "volume", "volume_size": 10,
        "delete_on_termination": True}])
    assert conn.compute.get("/servers/" + server.id).json()["server"]["image"] == ""


def test_seeded_servers_appear_as_given(lab, sdk):
    """seed_server makes a pre-existing server (status, metadata, age) visible through the API."""
    old = lab.seed_server("lab", "left-over", metadata={"owner": "x"}, age_seconds=3600)
    lab.seed_server("lab", "broken", status="ERROR")
    conn = sdk(lab)
    servers = {s.name: s for s in conn.compute.servers()}
    assert servers["left-over"].id == old and servers["left-over"].metadata == {"owner": "x"}
    assert servers["left-over"].addresses["private"][0]["addr"].startswith("127.10.")
    assert servers["broken"].status == "ERROR" and servers["broken"].fault["code"] == 500
    snapshot = {s["name"]: s for s in lab.servers("lab")}
    assert snapshot["broken"]["created"] - snapshot["left-over"]["created"] >= 3600
