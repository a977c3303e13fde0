"""Benchmark the lab OpenStack emulator itself: its own time per request (from its request log)
and the round trip seen by a plain HTTP client, for GET /servers/detail and POST /servers with N
servers present; then 1,000 creates by 32 threads through one real openstacksdk Connection.
Prints numbers; asserts nothing about time.

    python bench/bench_emulator.py [--sizes 0 100 1000] [--samples 50] [--creates 1000] [--threads 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from elastic.lab.cloud import LabCloud

BIG_QUOTA = {"instances": 100000, "cores": 1000000, "ram": 1000000000, "floating_ips": 50}


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"median {statistics.median(ordered) * 1000:7.2f} ms  p95 {p95 * 1000:7.2f} ms"


def _token(lab: LabCloud) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo", "domain": {"name": "Default"}, "password": "secret"}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}
    reply = requests.post(f"{lab.auth_url('lab')}/auth/tokens", json=body, timeout=10)
    reply.raise_for_status()
    return reply.headers["X-Subject-Token"]


def per_request(size: int, samples: int) -> None:
    with LabCloud({"clouds": {"lab": {"boot_seconds": 0, "quotas": BIG_QUOTA}}}) as lab:
        for i in range(size):
            lab.seed_server("lab", f"seed-{i:05d}")
        state = lab.clouds["lab"]
        flavor = next(f.id for f in state.flavors.values() if f.name == "m1.tiny")
        image = next(iter(state.images))
        network = next(n.id for n in state.networks.values() if n.name == "private")
        session = requests.Session()
        session.headers.update({"X-Auth-Token": _token(lab), "OpenStack-API-Version": "compute 2.96"})
        base = f"{lab.url}/lab/compute/v2.1"
        for label, call in (
            ("GET /servers/detail", lambda i: session.get(f"{base}/servers/detail", timeout=30)),
            ("POST /servers", lambda i: session.post(f"{base}/servers", timeout=30, json={"server": {
                "name": f"bench-{i}", "flavorRef": flavor, "imageRef": image, "networks": [{"uuid": network}]}})),
        ):
            lab.reset_requests()
            round_trips = []
            for i in range(samples):
                started = time.perf_counter()
                call(i).raise_for_status()
                round_trips.append(time.perf_counter() - started)
            own = [r["duration_s"] for r in lab.requests("lab") if r["endpoint"] == label]
            print(f"{label:20s} N={size:5d}  emulator {_ms(own)}   round trip {_ms(round_trips)}")


def concurrent_creates(creates: int, threads: int) -> None:
    import openstack
    from openstack.config import loader

    with LabCloud({"clouds": {"lab": {"boot_seconds": 0.05, "quotas": BIG_QUOTA}}}) as lab, \
            tempfile.TemporaryDirectory() as tmp:
        clouds_yaml = lab.write_clouds_yaml(Path(tmp) / "clouds.yaml")
        config = loader.OpenStackConfig(config_files=[str(clouds_yaml)], vendor_files=[], load_envvars=False)
        region = config.get_one(cloud="lab")
        conn = openstack.connection.Connection(config=region)
        conn.authorize()
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        image = conn.image.find_image("debian-12", ignore_missing=False)
        network = conn.network.find_network("private", ignore_missing=False)
        lab.reset_requests()

        def create(i: int) -> None:
            conn.compute.create_server(name=f"load-{i:05d}", flavor_id=flavor.id, image_id=image.id,
                                       networks=[{"uuid": network.id}])

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, range(creates)))
        wall = time.perf_counter() - started
        own = [r["duration_s"] for r in lab.requests("lab")]
        statuses = sorted({r["status"] for r in lab.requests("lab")}, key=str)
        print(f"{creates} creates by {threads} threads (openstacksdk, one Connection): wall {wall:.2f} s "
              f"({creates / wall:.0f}/s), servers {len(lab.servers('lab'))}, statuses {statuses}, "
              f"emulator {_ms(own)}")
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100, 1000])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()
    for size in args.sizes:
        per_request(size, args.samples)
    concurrent_creates(args.creates, args.threads)


if __name__ == "__main__":
    main()
