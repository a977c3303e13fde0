"""Under 50 % 5xx and a SIGKILL mid-run then a rerun, no node ever has two live servers at the end."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from elastic.lab.cloud import LabCloud

from tests.support.programs import config_text, make_site

pytestmark = pytest.mark.integration

NODES = "cpu-[001-020]"
NAMES = [f"cpu-{i:03d}" for i in range(1, 21)]
FLAVORS = [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}]
SEEDS = [1, 2, 3]


def lab_cloud() -> dict:
    """A cloud of quick but not instant servers: ~1 s to boot, so the kill lands among creates and polls."""
    return {"boot_seconds": 1.0, "delete_seconds": 0.2, "flavors": FLAVORS, "images": [{"name": "debian-12"}],
            "networks": [{"name": "private", "cidr": "127.10.0.0/16"}]}


def faults(seed: int) -> dict:
    """Half the requests fail 5xx; a fifth of the POSTs left alone are processed and their reply lost."""
    return {"error_rate": 0.5, "reply_lost_rate": 0.2, "reply_lost_methods": ["POST"], "latency_seconds": 0.05,
            "seed": seed}


def pool(clouds: list[str]) -> str:
    """One pool of 20 nodes over the given clouds, in that order."""
    entries = "".join(f"    - {{cloud: {c}, network: private}}\n" for c in clouds)
    return (f"cpu:\n  nodes: {NODES}\n  slurm: {{cpus: 1, real_memory: 1800}}\n"
            f"  boot: {{flavor: m1.small, image: debian-12}}\n  clouds:\n{entries}")


def live(lab: LabCloud, clouds: list[str]) -> list[dict]:
    """Every server not being deleted, on every cloud, each with its cloud."""
    return [{**s, "cloud": c} for c in clouds for s in lab.servers(c) if s["task_state"] != "deleting"]


def wait_for(lab: LabCloud, clouds: list[str], proc, seen, timeout: float = 30) -> None:
    """Until a request the emulator logged satisfies `seen` (or the run ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(seen(r) for c in clouds for r in lab.requests(c)):
            return
        time.sleep(0.01)


def describe(lab: LabCloud, clouds: list[str], site) -> str:
    """The servers left and the log's lines about nodes with other than one, for the failure message."""
    servers = live(lab, clouds)
    counts = Counter(s["name"] for s in servers)
    odd = sorted(n for n in NAMES if counts[n] != 1)
    lines = [f"nodes without exactly one live server: {odd}"]
    lines += [f"  {s['cloud']} {s['name']} {s['id']} {s['status']} created={s['created']}" for s in servers
              if s["name"] in odd]
    lines += [f"  log: {e}" for e in site.log_events() if e.get("node") in odd or set(e.get("nodes") or ()) & set(odd)]
    return "\n".join(lines[:200])


@pytest.mark.parametrize("clouds", [["lab"], ["east", "west"]], ids=["one-cloud", "two-cloud-pool"])
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_mid_resume_then_rerun_leaves_one_server_per_node(tmp_path, seed, clouds):
    """Resume of 20 nodes under 50 % 5xx and lost create replies, SIGKILLed at a seeded moment, then rerun without
    faults: one live server per node, exit 0; suspend then leaves none."""
    rng = random.Random(seed)
    with LabCloud({"clouds": {c: lab_cloud() for c in clouds}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        site.write_config(config_text(site, clouds_yaml, clouds={c: {} for c in clouds}, pools=pool(clouds)))
        for cloud in clouds:
            lab.set_faults(cloud, latency_seconds=0.05)

        proc = site.start("resume", NODES)
        try:
            # The faults begin with the creates: before them, at 50 % 5xx, the login or the flavor,
            # image and network lookups give up often enough to end the run before any create.
            wait_for(lab, clouds, proc, lambda r: r["endpoint"] == "POST /servers")
            for index, cloud in enumerate(clouds):
                lab.set_faults(cloud, **faults(seed * 10 + index))
            time.sleep(rng.uniform(0.0, 2.5))
            killed = proc.poll() is None
            proc.kill()  # SIGKILL, as Slurm 23.02+ does at its timeout
        finally:
            proc.kill()
            proc.wait(10)
        assert killed and proc.returncode == -9, "the first run ended before the kill"

        for cloud in clouds:
            lab.clear_faults(cloud)
        rerun = site.run("resume", NODES, timeout=120)
        assert rerun.returncode == 0, describe(lab, clouds, site)
        servers = live(lab, clouds)
        counts = Counter(s["name"] for s in servers)
        assert counts == Counter(NAMES), describe(lab, clouds, site)
        assert all(s["status"] == "ACTIVE" for s in servers)

        assert site.run("suspend", NODES, timeout=120).returncode == 0
        assert live(lab, clouds) == []
