"""Adaptive pacing against the emulator's 429 fault, over real HTTP with the real openstacksdk:
the rate backs off when the cloud refuses, a second run on the controller learns it through the
shared file, and the rate recovers once the cloud stops refusing. Also the JSON detail list: all
pages, the fields the flows use."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from elastic.cloud import BootRequest, OpenStackCloud
from elastic.config import META_CLUSTER, META_NODE, META_POOL, CloudConfig
from elastic.pacing import FORGET_AFTER, START_RATE, Pacer
from elastic.retry import with_retries

pytestmark = pytest.mark.integration

CONFIG = {"clouds": {"lab": {
    "boot_seconds": 0.05, "delete_seconds": 0.05,
    "flavors": [{"name": "m1.small", "vcpus": 1, "ram": 1024, "disk": 10}],
    "images": [{"name": "debian-12"}],
    "networks": [{"name": "private", "cidr": "127.10.0.0/16"}],
    "quotas": {"instances": 500, "cores": 2000, "ram": 2048000, "floating_ips": 10},
}}}


class ShiftedClock:
    """Real time plus an offset a test may move forward (the pacing's growth is time-based)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _cloud(clouds_yaml: Path, shared: Path, clock: ShiftedClock, run_id: str) -> tuple[OpenStackCloud, Pacer]:
    config = CloudConfig(clouds_yaml=clouds_yaml, api_timeout=10)
    pacer = Pacer("lab", ceiling=None, clock=clock, sleep=time.sleep, shared=shared, run_id=run_id)
    return OpenStackCloud("lab", config, clock=clock, pacer=pacer), pacer


def _request(cloud: OpenStackCloud, node: str) -> BootRequest:
    target = cloud.resolve_boot("m1.small", "debian-12", "private")
    return BootRequest(name=node, flavor_id=target.flavor_id, image_id=target.image_id, network_id=target.network_id,
                       metadata={META_CLUSTER: "pace", META_NODE: node, META_POOL: "cpu"})


def test_the_rate_backs_off_on_429_is_shared_and_recovers(make_lab, tmp_path):
    """Against 429 above 10 requests a second: every create succeeds, few are refused, the rate is
    halved below the slow start, a second run takes the learned rate from the shared file, and
    once the cloud stops refusing the rate grows back to unpaced."""
    lab = make_lab(CONFIG)
    clouds_yaml = lab.write_clouds_yaml(tmp_path / "clouds.yaml")
    shared = tmp_path / "pacing.json"
    clock = ShiftedClock()
    cloud, pacer = _cloud(clouds_yaml, shared, clock, "one")
    cloud.connect()
    requests = {f"n-{i:03d}": _request(cloud, f"n-{i:03d}") for i in range(60)}
    lab.set_faults("lab", rate_limit_per_second=10)
    lab.reset_requests()

    def create(node: str) -> str:
        return with_retries(lambda: cloud.create_server(requests[node]), sleep=time.sleep).id

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(create, requests))
    assert len(set(ids)) == 60
    records = lab.requests("lab")
    refused = sum(1 for r in records if r["status"] == 429)
    assert refused >= 1, "the fault never fired: this test proves nothing"
    # Without pacing, 16 threads against 10/s are refused several times for each success.
    assert refused / len(records) < 0.25, (refused, len(records))
    assert pacer.state.throttled_at is not None
    backed_off = pacer.rate()
    assert backed_off is not None and backed_off < START_RATE

    # A second run on this controller reads what the first learned, and shares the rate with it.
    other, other_pacer = _cloud(clouds_yaml, shared, clock, "two")
    other_pacer.sync()
    pacer.sync()
    assert other_pacer.state.throttled_at == pacer.state.throttled_at
    shared_rate = other_pacer.rate()
    assert shared_rate is not None and shared_rate <= backed_off

    # The cloud stops refusing: the rate grows back, additively, second by second.
    lab.clear_faults("lab")
    clock.offset += 30
    assert other.list_servers("pace")
    grown = pacer.rate()
    assert grown is not None and grown > backed_off
    # A run that starts after FORGET_AFTER slow-starts again, not from the old rate.
    clock.offset += FORGET_AFTER
    later, later_pacer = _cloud(clouds_yaml, shared, clock, "three")
    assert later.list_servers("pace")
    assert later_pacer.state.throttled_at is None and later_pacer.state.slow_start


def test_the_json_detail_list_follows_every_page_and_keeps_the_used_fields(make_lab, tmp_path):
    """More servers than one page: every one listed, with status, addresses, metadata, created."""
    config = {"clouds": {"lab": {**CONFIG["clouds"]["lab"], "boot_seconds": 0, "max_limit": 10}}}
    lab = make_lab(config)
    for i in range(25):
        lab.seed_server("lab", f"n-{i:03d}", metadata={META_CLUSTER: "pace", META_NODE: f"n-{i:03d}"})
    lab.seed_server("lab", "foreign", metadata={META_CLUSTER: "other"})
    clouds_yaml = lab.write_clouds_yaml(tmp_path / "clouds.yaml")
    cloud = OpenStackCloud("lab", CloudConfig(clouds_yaml=clouds_yaml, api_timeout=10))
    cloud.connect()
    lab.reset_requests()
    servers = cloud.list_servers("pace")
    assert sorted(s.name for s in servers) == [f"n-{i:03d}" for i in range(25)]
    assert all(s.status == "ACTIVE" and s.fixed_address() and s.created and s.node == s.name for s in servers)
    paths = [r["path"] for r in lab.requests("lab") if "/servers" in r["path"]]
    assert len(paths) == 3 and all("/servers/detail" in p for p in paths), paths  # 26 servers, pages of 10
    named = cloud.list_servers("pace", ["n-003", "n-017"])
    assert sorted(s.name for s in named) == ["n-003", "n-017"]
