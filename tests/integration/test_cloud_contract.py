"""The Cloud protocol's contract, run against both implementations: `OpenStackCloud` (the real
openstacksdk over HTTP to the lab emulator) and `elastic.testing.MemoryCloud` (what the unit tests
use). A behaviour the flows rely on that only one of them has would make the unit tests lie."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from elastic.cloud import (
    ACTIVE,
    BUILDING,
    BootRequest,
    Cloud,
    OpenStackCloud,
    Server,
    ServerGroup,
    floating_ip_mark,
)
from elastic.config import META_CLUSTER, META_NODE, META_POOL, CloudConfig
from elastic.errors import CloudError, CloudErrorKind
from elastic.lab.cloud import LabCloud
from elastic.testing import MemoryCloud

pytestmark = pytest.mark.integration

CLUSTER = "contract"


@dataclass
class Subject:
    cloud: Cloud
    seed: Callable[[str, dict[str, str]], None]  # a server made behind our back (another cluster, an old run)
    # a floating IP made behind our back: (description, server id or None) -> its id
    seed_ip: Callable[[str, str | None], str]


def _emulated(max_microversion: str = "2.96", delete_seconds: float = 0.2) -> Iterator[Subject]:
    config = {"clouds": {"lab": {
        "boot_seconds": 0.2, "delete_seconds": delete_seconds, "max_microversion": max_microversion,
        "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}],
        "images": [{"name": "debian-12"}],
        "keypairs": ["hpc"],
        "networks": [{"name": "private", "cidr": "127.10.0.0/16"},
                     {"name": "public", "cidr": "127.20.0.0/16", "external": True}],
        "quotas": {"instances": 100, "cores": 400, "ram": 1024000, "floating_ips": 10, "server_groups": 3,
                   "server_group_members": 2},
    }}}
    with LabCloud(config) as lab, tempfile.TemporaryDirectory() as tmp:
        clouds_yaml = lab.write_clouds_yaml(Path(tmp) / "clouds.yaml")
        cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=clouds_yaml, api_timeout=10, rate=0))
        yield Subject(cloud, lambda name, metadata: lab.seed_server("lab", name, metadata=metadata),
                      lambda description, server: lab.seed_floating_ip("lab", "public", description=description,
                                                                        server=server))


def _memory() -> Iterator[Subject]:
    cloud = MemoryCloud("lab", boot_polls=2, server_group_quota=3, server_group_member_quota=2)
    yield Subject(cloud, lambda name, metadata: cloud.add(name, metadata=metadata),
                  lambda description, server: cloud.add_floating_ip(description=description, server_id=server).id)


@pytest.fixture(params=["openstack-on-emulator", "memory"])
def subject(request) -> Iterator[Subject]:
    """Each contract test runs once per implementation."""
    yield from (_emulated() if request.param == "openstack-on-emulator" else _memory())


@pytest.fixture(params=["openstack-on-emulator-2.12", "openstack-on-emulator-2.96", "memory"])
def grouped(request) -> Iterator[Subject]:
    """Each server-group contract test runs on a Liberty-capped cloud (2.12: `policies`), a recent one (2.96:
    the SDK negotiates 2.64, `policy`), and MemoryCloud. Deletes take 1 s on the emulator, so a member is
    seen while its delete runs."""
    if request.param == "memory":
        yield from _memory()
    else:
        yield from _emulated(request.param.rsplit("-", 1)[1], delete_seconds=1.0)


def _ours(node: str) -> dict[str, str]:
    return {META_CLUSTER: CLUSTER, META_NODE: node, META_POOL: "cpu"}


def _request(cloud: Cloud, node: str, server_group: str | None = None) -> BootRequest:
    target = cloud.resolve_boot("m1.small", "debian-12", "private")
    return BootRequest(name=node, flavor_id=target.flavor_id, image_id=target.image_id,
                       network_id=target.network_id, metadata=_ours(node), server_group=server_group)


def _until(probe: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _only(cloud: Cloud, node: str) -> Server | None:
    servers = cloud.list_servers(CLUSTER, [node])
    assert len(servers) <= 1
    return servers[0] if servers else None


def test_a_created_server_is_listed_by_exact_name_and_turns_active_with_an_address(subject):
    """create_server answers BUILD with our name and metadata; the list finds it by its exact
    name only (not a longer name it is a prefix of), and it becomes ACTIVE with a fixed IPv4."""
    cloud = subject.cloud
    created = cloud.create_server(_request(cloud, "cpu-1"))
    cloud.create_server(_request(cloud, "cpu-10"))
    assert (created.name, created.status, created.cloud, created.node) == ("cpu-1", BUILDING, "lab", "cpu-1")
    active = _until(lambda: (s := _only(cloud, "cpu-1")) and s.status == ACTIVE and s)
    assert isinstance(active, Server) and active.id == created.id and active.pool == "cpu"
    assert active.fixed_address() and active.fixed_address().startswith("127.")


def test_only_our_clusters_servers_are_listed(subject):
    """A same-named server of another cluster, or one without our metadata, is never listed."""
    subject.seed("cpu-2", {META_CLUSTER: "someone-else", META_NODE: "cpu-2"})
    subject.seed("cpu-2", {})
    subject.seed("cpu-3", _ours("cpu-3"))
    assert [s.name for s in subject.cloud.list_servers(CLUSTER, ["cpu-2", "cpu-3"])] == ["cpu-3"]
    assert [s.name for s in subject.cloud.list_servers(CLUSTER)] == ["cpu-3"]
    assert subject.cloud.list_servers(CLUSTER, []) == []


def test_many_names_are_filtered_exactly(subject):
    """Above the regex limit the whole list is read and filtered here: exactly the named servers."""
    for index in range(45):
        subject.seed(f"cpu-{index}", _ours(f"cpu-{index}"))
    wanted = [f"cpu-{index}" for index in range(0, 45, 2)] + ["cpu-999"]
    assert sorted(s.name for s in subject.cloud.list_servers(CLUSTER, wanted)) == sorted(wanted[:-1])


def test_a_deleted_server_goes_and_a_second_delete_is_harmless(subject):
    """delete_server takes an id; the server is deleting or gone at once and gone soon; deleting
    it again (or an id never seen) raises nothing."""
    cloud = subject.cloud
    server = cloud.create_server(_request(cloud, "cpu-4"))
    cloud.delete_server(server.id)
    now = _only(cloud, "cpu-4")
    assert now is None or now.deleting
    assert _until(lambda: _only(cloud, "cpu-4") is None)
    cloud.delete_server(server.id)
    cloud.delete_server("00000000-0000-0000-0000-000000000000")


def test_unknown_names_are_not_found_errors(subject):
    """An unknown image, flavor, network or key pair is a NOT_FOUND CloudError naming it and the
    cloud, with the resource it is about as (kind, name)."""
    for flavor, image, network, missing in ((("m1.small", "centos-5", "private", ("image", "centos-5")),
                                             ("m9.huge", "debian-12", "private", ("flavor", "m9.huge")),
                                             ("m1.small", "debian-12", "nowhere", ("network", "nowhere")))):
        with pytest.raises(CloudError) as caught:
            subject.cloud.resolve_boot(flavor, image, network)
        assert caught.value.kind is CloudErrorKind.NOT_FOUND and missing[1] in caught.value.message
        assert caught.value.cloud == "lab" and caught.value.resource == missing
    with pytest.raises(CloudError) as caught:
        subject.cloud.flavor("m9.huge")
    assert caught.value.kind is CloudErrorKind.NOT_FOUND and caught.value.resource == ("flavor", "m9.huge")
    subject.cloud.find_keypair("hpc")
    with pytest.raises(CloudError) as caught:
        subject.cloud.find_keypair("nokey")
    assert caught.value.kind is CloudErrorKind.NOT_FOUND and caught.value.resource == ("keypair", "nokey")
    assert "key pair 'nokey' not found" in caught.value.message


def test_flavor_and_limits_describe_the_cloud(subject):
    """flavor() gives vCPUs and RAM; limits() counts the instances in use, moving with creates."""
    cloud = subject.cloud
    flavor = cloud.flavor("m1.small")
    assert (flavor.name, flavor.vcpus) == ("m1.small", 1) and flavor.ram > 0
    before = cloud.limits()
    cloud.create_server(_request(cloud, "cpu-5"))
    after = cloud.limits()
    assert after.instances == before.instances and after.instances_used == before.instances_used + 1


def test_a_floating_ip_is_attached_and_released(subject):
    """attach_floating_ip gives an IPv4 the listed server then shows as floating; releasing it
    (and releasing again) raises nothing."""
    cloud = subject.cloud
    server = cloud.create_server(_request(cloud, "cpu-6"))
    active = _until(lambda: (s := _only(cloud, "cpu-6")) and s.status == ACTIVE and s)
    assert isinstance(active, Server)
    address = cloud.attach_floating_ip(active, "public")
    assert address.startswith("127.")
    assert _until(lambda: (s := _only(cloud, "cpu-6")) and s.floating_address() == address)
    cloud.release_floating_ips(server.id)
    cloud.release_floating_ips(server.id)


def _active(cloud: Cloud, node: str) -> Server:
    cloud.create_server(_request(cloud, node))
    active = _until(lambda: (s := _only(cloud, node)) and s.status == ACTIVE and s)
    assert isinstance(active, Server)
    return active


def test_our_floating_ip_is_marked_and_listed_with_its_node_and_server(subject):
    """A floating IP attach_floating_ip makes is listed by list_floating_ips as ours: its node, its
    address, its port and server, a creation time; attaching again keeps the same one."""
    cloud = subject.cloud
    server = _active(cloud, "cpu-7")
    before = time.time()
    address = cloud.attach_floating_ip(server, "public")
    assert cloud.attach_floating_ip(server, "public") == address
    [ip] = cloud.list_floating_ips(CLUSTER)
    assert (ip.address, ip.node, ip.cloud, ip.server_id, ip.detached) == (address, "cpu-7", "lab", server.id, False)
    assert ip.port_id and ip.id and ip.status == "ACTIVE"
    assert ip.created is not None and before - 2 <= ip.created <= time.time() + 2
    assert cloud.list_floating_ips("someone-else") == []


def test_only_floating_ips_with_our_clusters_mark_are_listed(subject):
    """A floating IP without a description, with a human's, with another cluster's mark, or with our
    mark inside a longer text is never listed; one with our exact mark is, with its node."""
    cloud = subject.cloud
    server = _active(cloud, "cpu-8")
    for description in ("", "web frontend", floating_ip_mark("someone-else", "cpu-8"),
                        f"copy of {floating_ip_mark(CLUSTER, 'cpu-8')}", floating_ip_mark(CLUSTER, "cpu-8") + " x"):
        subject.seed_ip(description, None)
    subject.seed_ip("", server.id)
    ours = subject.seed_ip(floating_ip_mark(CLUSTER, "cpu-9"), None)
    listed = cloud.list_floating_ips(CLUSTER)
    assert [(ip.id, ip.node, ip.detached, ip.server_id) for ip in listed] == [(ours, "cpu-9", True, None)]


def test_a_floating_ip_outlives_its_server_detached_and_is_deleted_by_id(subject):
    """When its server is deleted without a release first (a killed suspend, an admin's delete),
    our floating IP stays allocated, detached (no port, no server, status DOWN); delete_floating_ip
    removes it, and again (or an unknown id) is harmless."""
    cloud = subject.cloud
    server = _active(cloud, "cpu-11")
    cloud.attach_floating_ip(server, "public")
    cloud.delete_server(server.id)
    assert _until(lambda: _only(cloud, "cpu-11") is None)
    [ip] = cloud.list_floating_ips(CLUSTER)
    assert (ip.node, ip.port_id, ip.server_id, ip.detached, ip.status) == ("cpu-11", None, None, True, "DOWN")
    cloud.delete_floating_ip(ip.id)
    assert cloud.list_floating_ips(CLUSTER) == []
    cloud.delete_floating_ip(ip.id)
    cloud.delete_floating_ip("00000000-0000-0000-0000-000000000000")


def test_releasing_a_servers_floating_ips_leaves_other_ips_alone(subject):
    """release_floating_ips deletes the IPs on that server's ports only: another server's and a
    detached one of ours stay."""
    cloud = subject.cloud
    first, second = _active(cloud, "cpu-12"), _active(cloud, "cpu-13")
    cloud.attach_floating_ip(first, "public")
    kept = cloud.attach_floating_ip(second, "public")
    detached = subject.seed_ip(floating_ip_mark(CLUSTER, "cpu-14"), None)
    cloud.release_floating_ips(first.id)
    assert sorted((ip.address if ip.server_id else ip.id) for ip in cloud.list_floating_ips(CLUSTER)) == sorted(
        [kept, detached])


def test_a_healthy_cloud_passes_its_probe(subject):
    """probe() with a short timeout raises nothing on a cloud that answers."""
    subject.cloud.probe(2.0)


# ---- server groups ------------------------------------------------------------------------------

def _group(cloud: Cloud, group_id: str) -> ServerGroup | None:
    found = [g for g in cloud.list_server_groups() if g.id == group_id]
    return found[0] if found else None


def test_a_server_group_is_created_listed_and_deleted_idempotently(grouped):
    """create_server_group answers the group (id, name, policy, no members) and the list shows it the same, in
    either of Nova's formats; delete removes it, and deleting it again, or an id never seen, raises nothing."""
    cloud = grouped.cloud
    group = cloud.create_server_group("contract-job-1", "anti-affinity")
    assert (group.name, group.policy, group.members) == ("contract-job-1", "anti-affinity", ()) and group.id
    assert _group(cloud, group.id) == group
    cloud.delete_server_group(group.id)
    assert _group(cloud, group.id) is None
    cloud.delete_server_group(group.id)
    cloud.delete_server_group("00000000-0000-0000-0000-000000000000")


def test_servers_created_with_the_group_are_its_members_until_their_delete_completes(grouped):
    """A server created with BootRequest.server_group is a member at once (one without it is not); after
    delete_server it is still listed while the delete runs, and leaves the group once it is gone."""
    cloud = grouped.cloud
    group = cloud.create_server_group("contract-job-2", "affinity")
    first = cloud.create_server(_request(cloud, "cpu-20", group.id))
    second = cloud.create_server(_request(cloud, "cpu-21", group.id))
    cloud.create_server(_request(cloud, "cpu-22"))
    listed = _group(cloud, group.id)
    assert listed is not None and sorted(listed.members) == sorted([first.id, second.id])
    cloud.delete_server(first.id)
    still = _group(cloud, group.id)
    assert still is not None and first.id in still.members
    assert _until(lambda: _only(cloud, "cpu-20") is None)
    after = _group(cloud, group.id)
    assert after is not None and after.members == (second.id,)


def test_a_hint_naming_a_missing_group_is_not_found(grouped):
    """A create whose server group does not exist (deleted meanwhile) is NOT_FOUND about ("server group", id),
    even with the instance quota to spare, and creates nothing."""
    cloud = grouped.cloud
    group = cloud.create_server_group("contract-job-3", "affinity")
    cloud.delete_server_group(group.id)
    with pytest.raises(CloudError) as caught:
        cloud.create_server(_request(cloud, "cpu-23", group.id))
    assert caught.value.kind is CloudErrorKind.NOT_FOUND and caught.value.resource == ("server group", group.id)
    assert group.id in caught.value.message and caught.value.cloud == "lab"
    assert cloud.list_servers(CLUSTER) == []


def test_server_group_quotas_are_quota_errors_and_limits_report_them(grouped):
    """Past the `server_groups` quota (3 here) a create is QUOTA; past `server_group_members` (2) a create with
    the hint is QUOTA and creates nothing; limits() reports both quotas and the groups in use."""
    cloud = grouped.cloud
    groups = [cloud.create_server_group(f"contract-job-{i}", "affinity") for i in range(3)]
    limits = cloud.limits()
    assert (limits.server_groups, limits.server_groups_used, limits.server_group_members) == (3, 3, 2)
    with pytest.raises(CloudError) as caught:
        cloud.create_server_group("contract-job-9", "affinity")
    assert caught.value.kind is CloudErrorKind.QUOTA and "too many server groups" in caught.value.message
    for node in ("cpu-30", "cpu-31"):
        cloud.create_server(_request(cloud, node, groups[0].id))
    with pytest.raises(CloudError) as caught:
        cloud.create_server(_request(cloud, "cpu-32", groups[0].id))
    assert caught.value.kind is CloudErrorKind.QUOTA and "too many servers in group" in caught.value.message
    assert sorted(s.name for s in cloud.list_servers(CLUSTER)) == ["cpu-30", "cpu-31"]
    cloud.delete_server_group(groups[1].id)
    assert cloud.limits().server_groups_used == 2


def test_an_unknown_policy_is_a_config_error(grouped):
    """A policy Nova does not have is CONFIG, and no group is made."""
    with pytest.raises(CloudError) as caught:
        grouped.cloud.create_server_group("contract-job-4", "together")
    assert caught.value.kind is CloudErrorKind.CONFIG and "together" in caught.value.message
    assert grouped.cloud.list_server_groups() == []


@pytest.mark.parametrize("cap, allowed", [("2.12", False), ("2.96", True)])
def test_soft_policies_need_compute_2_15(cap, allowed):
    """OpenStackCloud only (MemoryCloud has no microversion): on a Liberty cloud (2.12) a soft policy is CONFIG
    saying it needs 2.15, without a request Nova would refuse; on 2.96 it is made."""
    with contextlib.closing(_emulated(cap)) as subjects:  # the lab stops even when an assert fails
        cloud = next(subjects).cloud
        if allowed:
            assert cloud.create_server_group("contract-soft", "soft-anti-affinity").policy == "soft-anti-affinity"
        else:
            with pytest.raises(CloudError) as caught:
                cloud.create_server_group("contract-soft", "soft-anti-affinity")
            assert caught.value.kind is CloudErrorKind.CONFIG and "2.15" in caught.value.message
            assert cloud.create_server_group("contract-hard", "anti-affinity").policy == "anti-affinity"
        assert [g.name for g in cloud.list_server_groups()] == ["contract-soft" if allowed else "contract-hard"]


def test_a_full_affinity_host_is_a_capacity_error_on_the_server():
    """OpenStackCloud only (MemoryCloud has no hosts): on an emulated cloud of 2 hosts of 2 servers, a third member
    of an affinity group is accepted and then listed ERROR with Nova's "No valid host" fault, kind CAPACITY."""
    config = {"clouds": {"lab": {"boot_seconds": 0.1, "delete_seconds": 0.1, "hosts": 2, "host_capacity": 2,
                                 "images": [{"name": "debian-12"}]}}}
    with LabCloud(config) as lab, tempfile.TemporaryDirectory() as tmp:
        cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=lab.write_clouds_yaml(Path(tmp) / "clouds.yaml"),
                                                  api_timeout=10, rate=0))
        group = cloud.create_server_group("contract-mpi", "affinity")
        for node in ("cpu-40", "cpu-41", "cpu-42"):
            cloud.create_server(_request(cloud, node, group.id))
        failed = _until(lambda: (s := _only(cloud, "cpu-42")) and s.status == "ERROR" and s)
        assert isinstance(failed, Server) and failed.fault_kind is CloudErrorKind.CAPACITY
        assert failed.fault and failed.fault.startswith("No valid host was found")
        assert _until(lambda: all(s.status == ACTIVE for s in cloud.list_servers(CLUSTER, ["cpu-40", "cpu-41"])))
