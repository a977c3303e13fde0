"""Load: many concurrent creates through one shared openstacksdk Connection, none dropped."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration

SERVERS, THREADS = 1000, 32


def test_thousand_creates_from_32_threads_are_all_served(make_lab, sdk, eventually):
    """1,000 POST /servers from 32 threads on one Connection: 1,000 servers, every answer 202, 1,000 distinct loopback
    IPs."""
    lab = make_lab({"clouds": {"lab": {"boot_seconds": 0.05, "delete_seconds": 0.05,
                                       "quotas": {"instances": 2000, "cores": 4000, "ram": 4096000}}}})
    conn = sdk(lab)
    conn.authorize()
    flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
    image = conn.image.find_image("debian-12", ignore_missing=False)
    network = conn.network.find_network("private", ignore_missing=False)
    lab.reset_requests()

    def create(i: int) -> str:
        return conn.compute.create_server(name=f"load-{i:04d}", flavor_id=flavor.id, image_id=image.id,
                                          networks=[{"uuid": network.id}]).id

    with ThreadPoolExecutor(THREADS) as pool:
        ids = list(pool.map(create, range(SERVERS)))
    servers = lab.servers("lab")
    assert len(set(ids)) == SERVERS and {s["id"] for s in servers} == set(ids)
    assert {s["name"] for s in servers} == {f"load-{i:04d}" for i in range(SERVERS)}
    assert lab.request_counts() == {"POST /servers": SERVERS}
    assert {r["status"] for r in lab.requests()} == {202}
    eventually(lambda: all(s["status"] == "ACTIVE" for s in lab.servers("lab")))
    addresses = {s["addresses"]["private"][0]["addr"] for s in lab.servers("lab")}
    assert len(addresses) == SERVERS and all(a.startswith("127.10.") for a in addresses)
