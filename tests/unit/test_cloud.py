"""OpenStackCloud without HTTP: a stand-in for openstacksdk's Connection."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from elastic.cloud import BUILDING, BootRequest, OpenStackCloud
from elastic.config import CloudConfig


def test_a_created_server_is_stamped_by_the_injected_clock(tmp_path, monkeypatch):
    """The create reply has no time: `created` is the cloud's clock at the reply. The body is
    Nova's wording of what the SDK's Server resource would send, at the SDK's microversion."""
    import requests
    from openstack.compute.v2.server import Server as SdkServer

    sent: dict[str, Any] = {}

    def post(url: str, **kwargs: Any) -> requests.Response:
        sent.update(url=url, **kwargs)
        reply = requests.Response()
        reply.status_code = 202
        reply._content = b'{"server": {"id": "s-1", "links": [], "adminPass": "x"}}'
        reply.headers["Content-Type"] = "application/json"
        return reply

    monkeypatch.setattr(SdkServer, "_get_microversion", classmethod(lambda cls, session: "2.96"))
    cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=tmp_path / "clouds.yaml", rate=0), clock=lambda: 1234.5)
    cloud._conn = SimpleNamespace(compute=SimpleNamespace(post=post))
    server = cloud.create_server(BootRequest(name="cpu-001", flavor_id="f", image_id="i", network_id="n",
                                             metadata={"elastic_node": "cpu-001"}, key_name="hpc",
                                             security_groups=("default",)))
    assert (server.id, server.status, server.created) == ("s-1", BUILDING, 1234.5)
    assert sent["url"] == "/servers" and sent["microversion"] == "2.96"
    assert sent["json"] == {"server": {
        "name": "cpu-001", "flavorRef": "f", "imageRef": "i", "networks": [{"uuid": "n"}],
        "metadata": {"elastic_node": "cpu-001"}, "key_name": "hpc", "security_groups": [{"name": "default"}]}}


def test_a_create_with_an_attribute_we_cannot_word_goes_through_the_sdk(tmp_path, monkeypatch):
    """An attribute missing from _CREATE_BODY (a later addition) is sent by the SDK's create_server."""
    import elastic.cloud

    sent: dict[str, Any] = {}

    def create_server(**attrs: Any) -> SimpleNamespace:
        sent.update(attrs)
        return SimpleNamespace(id="s-2")

    monkeypatch.setattr(elastic.cloud, "_CREATE_BODY",
                        {k: v for k, v in elastic.cloud._CREATE_BODY.items() if k != "key_name"})
    cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=tmp_path / "clouds.yaml"), clock=lambda: 1.0)
    cloud._conn = SimpleNamespace(compute=SimpleNamespace(create_server=create_server))
    server = cloud.create_server(BootRequest(name="cpu-002", flavor_id="f", image_id="i", network_id="n",
                                             metadata={}, key_name="hpc"))
    assert server.id == "s-2" and sent["key_name"] == "hpc" and sent["flavor_id"] == "f"


# ---- floating IPs ----------------------------------------------------------------------------------


def test_the_floating_ip_mark_reads_back_exactly_and_nothing_else_is_ours():
    """The mark names cluster and node and reads back; a description that only contains, extends or
    resembles it is no one's."""
    from elastic.cloud import floating_ip_mark, floating_ip_owner

    assert floating_ip_owner(floating_ip_mark("engage1", "cpu-001")) == ("engage1", "cpu-001")
    assert floating_ip_owner(floating_ip_mark("a.b_c-1", "gpu.x-7")) == ("a.b_c-1", "gpu.x-7")
    for text in (None, "", "web", "elastic cluster=engage1", "elastic cluster=engage1 node=",
                 "note: elastic cluster=engage1 node=cpu-001", "elastic cluster=engage1 node=cpu-001 extra",
                 "elastic cluster=engage1 node=cpu-001\n", "elastic  cluster=engage1 node=cpu-001",
                 "Elastic cluster=engage1 node=cpu-001"):
        assert floating_ip_owner(text) is None, text


class _Neutron:
    """openstacksdk's network proxy as attach/list use it; `refuse_description` plays a pre-Mitaka Neutron."""

    def __init__(self, refuse_description: bool = False, items: list[Any] | None = None):
        self.refuse_description = refuse_description
        self.created: list[dict[str, Any]] = []
        self.items = items or []
        self.queries: list[dict[str, Any]] = []
        self.port_gets: list[str] = []

    def ports(self, **query: Any) -> list[Any]:
        return [SimpleNamespace(id="port-1", device_id=query.get("device_id"))]

    def ips(self, **query: Any) -> list[Any]:
        self.queries.append(query)
        return [] if "port_id" in query else self.items

    def get_port(self, port_id: str) -> Any:
        from openstack import exceptions as sdk

        self.port_gets.append(port_id)
        if port_id == "gone":
            raise sdk.NotFoundException(message=f"Port {port_id} could not be found.")
        return SimpleNamespace(id=port_id, device_id=f"server-of-{port_id}")

    def create_ip(self, **attrs: Any) -> Any:
        from openstack import exceptions as sdk

        if self.refuse_description and "description" in attrs:
            raise sdk.BadRequestException(message="Unrecognized attribute(s) 'description'")
        self.created.append(attrs)
        return SimpleNamespace(floating_ip_address="127.20.0.5")


def _cloud_with(tmp_path, neutron: _Neutron) -> OpenStackCloud:
    cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=tmp_path / "clouds.yaml", rate=0))
    cloud._conn = SimpleNamespace(current_project_id="proj-1")
    cloud._proxies["network"] = neutron
    cloud._cache[("network", "public")] = {"id": "net-public"}
    return cloud


def test_attach_marks_the_ip_and_falls_back_unmarked_on_a_neutron_without_descriptions(tmp_path):
    """The create carries our mark; a Neutron that refuses the attribute (400 Unrecognized attribute)
    gets the create again without it, and later creates on that cloud skip it."""
    from elastic.cloud import Server

    server = Server(id="s-1", name="cpu-001", status="ACTIVE", cloud="lab",
                    metadata={"elastic_cluster": "engage1", "elastic_node": "cpu-001"})
    modern = _Neutron()
    assert _cloud_with(tmp_path, modern).attach_floating_ip(server, "public") == "127.20.0.5"
    assert modern.created == [{"floating_network_id": "net-public", "port_id": "port-1",
                               "description": "elastic cluster=engage1 node=cpu-001"}]
    old = _Neutron(refuse_description=True)
    cloud = _cloud_with(tmp_path, old)
    cloud.attach_floating_ip(server, "public")
    cloud.attach_floating_ip(server, "public")
    assert old.created == [{"floating_network_id": "net-public", "port_id": "port-1"}] * 2


def test_list_floating_ips_keeps_our_clusters_and_names_each_ports_server(tmp_path):
    """Only this project's IPs are asked for; only those with our cluster's mark are kept; the
    server of an attached one comes from port_details, or from one port look-up without it (none
    when that port is gone meanwhile)."""
    def item(ident: str, description: str, port: str | None = None, details: Any = None) -> SimpleNamespace:
        return SimpleNamespace(id=ident, floating_ip_address=f"127.20.0.{ident[-1]}", description=description,
                               port_id=port, port_details=details, created_at="2026-01-01T00:00:00Z", status="DOWN")

    neutron = _Neutron(items=[
        item("ip-1", "elastic cluster=engage1 node=cpu-001"),
        item("ip-2", "elastic cluster=engage1 node=cpu-002", "p2", {"device_id": "s-2"}),
        item("ip-3", "elastic cluster=engage1 node=cpu-003", "p3"),
        item("ip-4", "elastic cluster=other node=cpu-001"), item("ip-5", None), item("ip-6", "bastion"),
        item("ip-7", "elastic cluster=engage1 node=cpu-007", "gone")])
    found = _cloud_with(tmp_path, neutron).list_floating_ips("engage1")
    assert [(ip.id, ip.node, ip.port_id, ip.server_id, ip.detached) for ip in found] == [
        ("ip-1", "cpu-001", None, None, True), ("ip-2", "cpu-002", "p2", "s-2", False),
        ("ip-3", "cpu-003", "p3", "server-of-p3", False), ("ip-7", "cpu-007", "gone", None, False)]
    assert found[0].created == 1767225600.0 and neutron.queries == [{"project_id": "proj-1"}]
    assert neutron.port_gets == ["p3", "gone"]
