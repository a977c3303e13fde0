"""OpenStackCloud without HTTP: a stand-in for openstacksdk's Connection."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from elastic.cloud import BUILDING, BootRequest, OpenStackCloud
from elastic.config import CloudConfig


def test_a_created_server_is_stamped_by_the_injected_clock(tmp_path):
    """The create reply has no time: `created` is the cloud's clock at the reply."""
    sent: dict[str, Any] = {}

    def create_server(**attrs: Any) -> SimpleNamespace:
        sent.update(attrs)
        return SimpleNamespace(id="s-1")

    cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=tmp_path / "clouds.yaml", rate=0), clock=lambda: 1234.5)
    cloud._conn = SimpleNamespace(compute=SimpleNamespace(create_server=create_server))
    server = cloud.create_server(BootRequest(name="cpu-001", flavor_id="f", image_id="i", network_id="n",
                                             metadata={"elastic_node": "cpu-001"}))
    assert (server.id, server.status, server.created) == ("s-1", BUILDING, 1234.5)
    assert sent["name"] == "cpu-001" and sent["image_id"] == "i"
