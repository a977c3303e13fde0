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
