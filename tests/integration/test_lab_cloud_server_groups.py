"""The emulator's server groups and hosts, through the real openstacksdk over HTTP: os-server-groups
in both policy formats by microversion (Nova's schemas: `policies` to 2.63, soft policies from 2.15,
`policy`/`rules` from 2.64, project_id/user_id from 2.13), the scheduler hint `group` with members
kept as servers come and go, the server-group quotas and /limits, and hosts with a capacity where
hard affinity and anti-affinity end in Nova's "No valid host was found"."""

from __future__ import annotations

import openstack.exceptions as exc
import pytest
import requests

from elastic.lab.cloud import LabCloud, LabConfigError

from tests.support.lab import FAST

pytestmark = pytest.mark.integration

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."


def boot(conn, name: str, group: str | None = None, **extra):
    """POST /servers through the proxy layer, with the scheduler hint `group` when given."""
    attrs = {"name": name, "flavor_id": conn.compute.find_flavor("m1.small", ignore_missing=False).id,
             "image_id": conn.image.find_image("debian-12", ignore_missing=False).id,
             "networks": [{"uuid": conn.network.find_network("private", ignore_missing=False).id}], **extra}
    if group is not None:
        attrs["scheduler_hints"] = {"group": group}
    return conn.compute.create_server(**attrs)


def settled(conn, server, status: str = "ACTIVE"):
    return conn.compute.wait_for_server(server, status=status, failures=[], interval=0.02, wait=5)


def post_group(conn, body: dict, microversion: str):
    """POST /os-server-groups at an exact microversion; the raw response."""
    return conn.compute.post("/os-server-groups", json=body, microversion=microversion, raise_exc=False)


def lab_with(make_lab, **settings) -> LabCloud:
    return make_lab({"clouds": {"lab": {**FAST, **settings}}})


# ---- the API, by microversion -------------------------------------------------------------------

def test_old_format_below_2_64(make_lab, sdk):
    """On a 2.12 cloud the SDK sends `policies` (from its `policy`) and gets Nova's 2.1 view back: 200, `policies`,
    empty `metadata`, no project_id/user_id, no `policy`/`rules` on the wire."""
    lab = lab_with(make_lab, max_microversion="2.12")
    conn = sdk(lab)
    group = conn.compute.create_server_group(name="job-7", policy="anti-affinity")
    (create,) = [r for r in lab.requests("lab") if r["endpoint"] == "POST /os-server-groups"]
    assert create["status"] == 200 and create["microversion"] == "2.12"
    raw = conn.compute.get(f"/os-server-groups/{group.id}").json()["server_group"]
    assert raw == {"id": group.id, "name": "job-7", "policies": ["anti-affinity"], "metadata": {}, "members": []}
    (listed,) = conn.compute.server_groups()
    assert (listed.id, listed.policies, listed.policy) == (group.id, ["anti-affinity"], None)


def test_new_format_from_2_64(make_lab, sdk):
    """On a 2.96 cloud the SDK negotiates 2.64 for server groups: `policy` and `rules` (anti-affinity's
    max_server_per_host), project_id and user_id; no `policies`, no `metadata`."""
    lab = lab_with(make_lab)
    conn = sdk(lab)
    group = conn.compute.create_server_group(name="job-8", policy="anti-affinity", rules={"max_server_per_host": 2})
    raw = conn.compute.get(f"/os-server-groups/{group.id}", microversion="2.64").json()["server_group"]
    assert set(raw) == {"id", "name", "policy", "rules", "members", "project_id", "user_id"}
    assert (raw["policy"], raw["rules"], raw["members"]) == ("anti-affinity", {"max_server_per_host": 2}, [])
    assert len(raw["project_id"]) == 32 and raw["user_id"]
    at_2_13 = conn.compute.get(f"/os-server-groups/{group.id}", microversion="2.13").json()["server_group"]
    assert at_2_13["policies"] == ["anti-affinity"] and "project_id" in at_2_13 and "rules" not in at_2_13
    assert [g.policy for g in conn.compute.server_groups()] == ["anti-affinity"]


@pytest.mark.parametrize("microversion, body, message", [
    ("2.14", {"name": "g", "policies": ["soft-affinity"]},
     "Invalid input for field/attribute 0. Value: soft-affinity. 'soft-affinity' is not one of "
     "['anti-affinity', 'affinity']"),
    ("2.63", {"name": "g", "policy": "affinity"},
     "Invalid input for field/attribute server_group. Value: {'name': 'g', 'policy': 'affinity'}. "
     "'policies' is a required property"),
    ("2.64", {"name": "g", "policies": ["affinity"]},
     "Invalid input for field/attribute server_group. Value: {'name': 'g', 'policies': ['affinity']}. "
     "'policy' is a required property"),
    ("2.64", {"name": "g", "policy": "together"},
     "Invalid input for field/attribute policy. Value: together. 'together' is not one of "
     "['anti-affinity', 'affinity', 'soft-anti-affinity', 'soft-affinity']"),
    ("2.64", {"name": "g", "policy": "affinity", "rules": {"max_server_per_host": 2}},
     "Only anti-affinity policy supports rules."),
    ("2.15", {"name": "g", "policies": ["affinity", "anti-affinity"]},
     "Invalid input for field/attribute policies. Value: ['affinity', 'anti-affinity']. "
     "['affinity', 'anti-affinity'] is too long"),
    ("2.1", {"name": " g", "policies": ["affinity"]},
     "An invalid 'name' value was provided. The name must be: printable characters. "
     "Can not start or end with whitespace."),
])
def test_a_body_nova_refuses_is_a_400_with_novas_message(lab, sdk, microversion, body, message):
    """The schema of the request's microversion decides: soft policies only from 2.15, `policies` until 2.63,
    `policy` from 2.64, rules only for anti-affinity; nothing is created."""
    conn = sdk(lab)
    reply = post_group(conn, {"server_group": body}, microversion)
    assert reply.status_code == 400
    assert reply.json() == {"badRequest": {"code": 400, "message": message}}
    assert lab.server_groups("lab") == []


@pytest.mark.parametrize("microversion, body, policy", [
    ("2.15", {"name": "g", "policies": ["soft-affinity"]}, "soft-affinity"),
    ("2.63", {"name": "g", "policies": ["soft-anti-affinity"]}, "soft-anti-affinity"),
    ("2.64", {"name": "g", "policy": "affinity"}, "affinity"),
    ("2.96", {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": "3"}}, "anti-affinity"),
])
def test_a_body_nova_accepts_is_a_200(lab, sdk, microversion, body, policy):
    """Soft policies from 2.15; at 2.64 `policy`, and max_server_per_host as Nova's positive integer (digits too)."""
    conn = sdk(lab)
    reply = post_group(conn, {"server_group": body}, microversion)
    assert reply.status_code == 200
    assert lab.server_groups("lab")[0]["policy"] == policy
    shown = reply.json()["server_group"]
    assert shown.get("policy", (shown.get("policies") or [None])[0]) == policy


def test_show_and_delete_a_missing_group_are_404(lab, sdk):
    """GET or DELETE of an unknown group is Nova's 404 itemNotFound; the SDK's delete with ignore_missing is quiet."""
    conn = sdk(lab)
    missing = "2b6a1a57-7f4e-4f0e-9a53-3c1f1d1c0e77"
    reply = conn.compute.get(f"/os-server-groups/{missing}", raise_exc=False)
    assert reply.status_code == 404
    assert reply.json() == {"itemNotFound": {"code": 404, "message": f"Instance group {missing} could not be found."}}
    with pytest.raises(exc.NotFoundException):
        conn.compute.delete_server_group(missing, ignore_missing=False)
    conn.compute.delete_server_group(missing, ignore_missing=True)
    group = conn.compute.create_server_group(name="g", policy="affinity")
    conn.compute.delete_server_group(group)
    assert list(conn.compute.server_groups()) == []


def test_list_pages_with_limit_and_offset_and_refuses_unknown_parameters_from_2_75(lab, sdk):
    """Nova's index pages with limit/offset (oldest first here); from 2.75 an unknown query parameter is a 400,
    before it is ignored."""
    conn = sdk(lab)
    ids = [conn.compute.create_server_group(name=f"g{i}", policy="affinity").id for i in range(3)]
    page = conn.compute.get("/os-server-groups?limit=1&offset=1").json()["server_groups"]
    assert [g["id"] for g in page] == ids[1:2]
    assert conn.compute.get("/os-server-groups?colour=red", microversion="2.74").status_code == 200
    refused = conn.compute.get("/os-server-groups?colour=red", microversion="2.75", raise_exc=False)
    assert refused.status_code == 400 and "colour" in refused.json()["badRequest"]["message"]


# ---- the hint and members -----------------------------------------------------------------------

@pytest.mark.parametrize("cap", ["2.12", "2.96"])
def test_members_follow_servers_created_with_the_hint(make_lab, sdk, eventually, cap):
    """A server created with the hint is a member at once; it stays one while it is being deleted and leaves
    when its delete completes; a server without the hint joins no group."""
    lab = lab_with(make_lab, max_microversion=cap, delete_seconds=0.3)
    conn = sdk(lab)
    group = conn.compute.create_server_group(name="job", policy="soft-anti-affinity" if cap == "2.96" else "affinity")
    first, second = boot(conn, "n1", group.id), boot(conn, "n2", group.id)
    boot(conn, "loner")
    request = [r for r in lab.requests("lab") if r["endpoint"] == "POST /servers"][0]
    assert request["status"] == 202
    assert sorted(conn.compute.get_server_group(group.id).member_ids) == sorted([first.id, second.id])
    conn.compute.delete_server(first)
    assert conn.compute.get_server(first.id).task_state == "deleting"
    assert first.id in conn.compute.get_server_group(group.id).member_ids
    eventually(lambda: conn.compute.get_server_group(group.id).member_ids == [second.id])


def test_a_hint_naming_a_missing_group_is_a_400_before_quota(make_lab, sdk):
    """Nova looks the hinted group up before any quota check: InstanceGroupNotFound is a 400, even with the
    instance quota used up; a hint that is no UUID fails the schema; nothing is created."""
    lab = lab_with(make_lab, quotas={"instances": 0})
    conn = sdk(lab)
    missing = "6d5a2c2e-5a7e-4b86-9b9a-1f2e3d4c5b6a"
    with pytest.raises(exc.BadRequestException) as caught:
        boot(conn, "n1", missing)
    assert f"Instance group {missing} could not be found." in str(caught.value)
    with pytest.raises(exc.BadRequestException, match="Invalid input for field/attribute group"):
        boot(conn, "n1", "job-7")
    with pytest.raises(exc.ForbiddenException, match="Quota exceeded for instances"):
        boot(conn, "n1")
    assert lab.servers("lab") == []


# ---- quotas and /limits -------------------------------------------------------------------------

def test_server_group_quota_and_limits(make_lab, sdk):
    """maxServerGroups and maxServerGroupMembers come from the quotas, totalServerGroupsUsed moves with creates
    and deletes; over `server_groups` a create is Nova's 403 "too many server groups"."""
    lab = lab_with(make_lab, quotas={"server_groups": 2, "server_group_members": 5})
    conn = sdk(lab)

    def absolute():
        return conn.compute.get("/limits", microversion="2.96").json()["limits"]["absolute"]

    assert (absolute()["maxServerGroups"], absolute()["maxServerGroupMembers"]) == (2, 5)
    assert absolute()["totalServerGroupsUsed"] == 0
    first = conn.compute.create_server_group(name="a", policy="affinity")
    conn.compute.create_server_group(name="b", policy="affinity")
    assert absolute()["totalServerGroupsUsed"] == 2
    with pytest.raises(exc.ForbiddenException) as caught:
        conn.compute.create_server_group(name="c", policy="affinity")
    assert caught.value.status_code == 403 and "Quota exceeded, too many server groups." in str(caught.value)
    conn.compute.delete_server_group(first)
    assert absolute()["totalServerGroupsUsed"] == 1
    conn.compute.create_server_group(name="c", policy="affinity")
    lab.set_quota("lab", server_groups=-1)
    conn.compute.create_server_group(name="d", policy="affinity")
    assert absolute()["maxServerGroups"] == -1 and absolute()["totalServerGroupsUsed"] == 3
    # Image metadata limits left the compute API at 2.39.
    assert "maxImageMeta" not in absolute()
    assert conn.compute.get("/limits", microversion="2.38").json()["limits"]["absolute"]["maxImageMeta"] == 128


def test_server_group_member_quota(make_lab, sdk):
    """Beyond `server_group_members` in one group a create with the hint is Nova's 403 "too many servers in group"
    (counted after the instance quota); other groups and servers without the hint are not limited by it."""
    lab = lab_with(make_lab, quotas={"server_group_members": 2})
    conn = sdk(lab)
    full = conn.compute.create_server_group(name="full", policy="soft-affinity")
    other = conn.compute.create_server_group(name="other", policy="soft-affinity")
    boot(conn, "a", full.id)
    boot(conn, "b", full.id)
    with pytest.raises(exc.ForbiddenException) as caught:
        boot(conn, "c", full.id)
    assert "Quota exceeded, too many servers in group" in str(caught.value)
    boot(conn, "c", other.id)
    boot(conn, "d")
    assert len(conn.compute.get_server_group(full.id).member_ids) == 2 and len(lab.servers("lab")) == 4


# ---- hosts and policies -------------------------------------------------------------------------

def test_hard_affinity_shares_one_host_until_it_is_full(make_lab, sdk):
    """affinity puts every member on the first member's host (one hostId); when that host is full the next
    member goes ERROR with Nova's fault and no hostId, though other hosts have room; a freed slot is used again."""
    lab = lab_with(make_lab, hosts=3, host_capacity=2)
    conn = sdk(lab)
    group = conn.compute.create_server_group(name="mpi", policy="affinity")
    first, second = (settled(conn, boot(conn, f"n{i}", group.id)) for i in (1, 2))
    assert first.host_id and first.host_id == second.host_id
    third = settled(conn, boot(conn, "n3", group.id), status="ERROR")
    assert third.fault["code"] == 500 and third.fault["message"] == NO_VALID_HOST and third.host_id == ""
    assert third.id in conn.compute.get_server_group(group.id).member_ids  # an ERROR member stays a member
    assert settled(conn, boot(conn, "elsewhere")).host_id not in ("", first.host_id)
    conn.compute.delete_server(second)
    conn.compute.wait_for_delete(second, interval=0.02, wait=5)
    assert settled(conn, boot(conn, "n4", group.id)).host_id == first.host_id


def test_hard_anti_affinity_needs_a_host_per_member(make_lab, sdk):
    """anti-affinity puts each member on its own host; with every host taken by a member the next is ERROR/no valid
    host; at 2.64 max_server_per_host=2 lets two members share."""
    lab = lab_with(make_lab, hosts=2)
    conn = sdk(lab)
    group = conn.compute.create_server_group(name="spread", policy="anti-affinity")
    a, b = (settled(conn, boot(conn, f"n{i}", group.id)) for i in (1, 2))
    assert "" not in (a.host_id, b.host_id) and a.host_id != b.host_id
    assert settled(conn, boot(conn, "n3", group.id), status="ERROR").fault["message"] == NO_VALID_HOST
    pairs = conn.compute.create_server_group(name="pairs", policy="anti-affinity", rules={"max_server_per_host": 2})
    hosts = [settled(conn, boot(conn, f"p{i}", pairs.id)).host_id for i in range(4)]
    assert sorted(hosts.count(h) for h in set(hosts)) == [2, 2]
    assert settled(conn, boot(conn, "p4", pairs.id), status="ERROR").fault["message"] == NO_VALID_HOST


def test_soft_policies_prefer_but_never_fail(make_lab, sdk):
    """soft-affinity keeps members together while the host has room, then uses another host instead of failing;
    soft-anti-affinity spreads over the hosts, then shares one instead of failing."""
    lab = lab_with(make_lab, hosts=2, host_capacity=2)
    conn = sdk(lab)
    together = conn.compute.create_server_group(name="together", policy="soft-affinity")
    hosts = [settled(conn, boot(conn, f"t{i}", together.id)).host_id for i in range(3)]
    assert hosts[0] == hosts[1] != hosts[2] and "" not in hosts
    for server in list(conn.compute.servers()):
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, interval=0.02, wait=5)
    apart = conn.compute.create_server_group(name="apart", policy="soft-anti-affinity")
    hosts = [settled(conn, boot(conn, f"a{i}", apart.id)).host_id for i in range(3)]
    assert len(set(hosts[:2])) == 2 and hosts[2] in hosts[:2]


def test_without_a_group_servers_spread_and_a_full_cloud_is_no_valid_host(make_lab, sdk):
    """Without a group the scheduler takes the emptiest host; when every host is full a create is still accepted
    (202) and the server goes ERROR with Nova's fault, counted in /limits until deleted."""
    lab = lab_with(make_lab, hosts=2, host_capacity=1)
    conn = sdk(lab)
    one, two = (settled(conn, boot(conn, f"n{i}")) for i in (1, 2))
    assert one.host_id != two.host_id
    third = settled(conn, boot(conn, "n3"), status="ERROR")
    assert third.fault["message"] == NO_VALID_HOST
    assert conn.compute.get_limits().absolute.instances_used == 3
    assert [s["host"] for s in lab.servers("lab")] == ["lab-compute-1", "lab-compute-2", None]


def test_default_hosts_leave_ordinary_boots_alone(lab, sdk):
    """With the default hosts (4, no capacity limit) many servers without a group all boot, spread over the hosts."""
    conn = sdk(lab)
    servers = [boot(conn, f"n{i}") for i in range(10)]
    host_ids = {settled(conn, s).host_id for s in servers}
    assert len(host_ids) == 4 and "" not in host_ids


@pytest.mark.parametrize("settings, key", [
    ({"hosts": 0}, "clouds.lab.hosts"),
    ({"hosts": "many"}, "clouds.lab.hosts"),
    ({"host_capacity": 0}, "clouds.lab.host_capacity"),
    ({"host_capacity": -2}, "clouds.lab.host_capacity"),
    ({"host_capacity": True}, "clouds.lab.host_capacity"),
    ({"quotas": {"server_groups": -2}}, "clouds.lab.quotas.server_groups"),
    ({"quotas": {"server_group_members": "ten"}}, "clouds.lab.quotas.server_group_members"),
])
def test_bad_host_and_quota_settings_name_the_key(settings, key):
    """A bad hosts, host_capacity or server-group quota is a LabConfigError naming the key."""
    with pytest.raises(LabConfigError, match=key.replace(".", r"\.")):
        LabCloud({"clouds": {"lab": settings}})


def test_both_hint_spellings_and_the_control_endpoint(lab, sdk):
    """Nova reads `os:scheduler_hints` (what the nova CLI sends) as well as `OS-SCH-HNT:scheduler_hints` (what
    openstacksdk sends), the first winning; GET /_lab/server-groups shows the groups and their members."""
    conn = sdk(lab)
    group = conn.compute.create_server_group(name="g", policy="affinity")
    other = conn.compute.create_server_group(name="other", policy="affinity")
    server = {"name": "raw", "flavorRef": conn.compute.find_flavor("m1.small").id,
              "imageRef": conn.image.find_image("debian-12").id,
              "networks": [{"uuid": conn.network.find_network("private").id}]}
    reply = conn.compute.post("/servers", json={"server": server, "os:scheduler_hints": {"group": group.id},
                                                "OS-SCH-HNT:scheduler_hints": {"group": other.id}})
    created = reply.json()["server"]["id"]
    shown = requests.get(f"{lab.url}/_lab/server-groups?cloud=lab", timeout=5).json()["server_groups"]["lab"]
    assert [(g["name"], g["members"]) for g in shown] == [("g", [created]), ("other", [])]
