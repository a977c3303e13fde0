"""power_down_force of a node a resume is serving (issue 10): the suspend Slurm starts after the
resume waits for the node's lock with it; the resume then boots nothing for that node."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from elastic.config import load_config
from elastic.lab.cloud import LabCloud

from tests.support.programs import config_text, make_site

pytestmark = pytest.mark.integration

FLAVORS = [{"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20}]
POOL = ("cpu:\n  nodes: cpu-[001-002]\n  slurm: {cpus: 1, real_memory: 1800}\n"
        "  boot: {flavor: m1.small, image: debian-12}\n  clouds:\n    - {cloud: lab, network: private}\n")


def until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def released(history: Path, node: str) -> bool:
    try:
        return node in json.loads(history.read_text()).get("released", {})
    except (OSError, ValueError):
        return False


def test_a_suspend_of_a_node_the_resume_comes_back_for_leaves_no_server(tmp_path):
    """Resume cpu-[001-002] while another run holds cpu-002's lock: cpu-001 boots at once. A
    suspend of cpu-002 (power_down_force), started after the resume, waits for the same lock. When
    the lock is let go, whichever of the two takes it first, the resume boots nothing for cpu-002
    and cancels it without a Slurm state change, and no server is left for cpu-002."""
    cloud = {"boot_seconds": 0.3, "delete_seconds": 2.0, "flavors": FLAVORS, "images": [{"name": "debian-12"}],
             "networks": [{"name": "private", "cidr": "127.11.0.0/16"}]}
    with LabCloud({"clouds": {"lab": cloud}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        config_path = site.write_config(config_text(site, clouds_yaml, pools=POOL))
        config = load_config(config_path)
        assert site.run("resume", "cpu-002").returncode == 0  # the booting node's server
        assert [s["name"] for s in lab.servers("lab")] == ["cpu-002"]

        config.lock_dir.mkdir(parents=True, exist_ok=True)
        held = os.open(config.lock_dir / "cpu-002.lock", os.O_RDWR | os.O_CREAT, 0o640)
        procs = []
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            resume = site.start("resume", "cpu-[001-002]")
            procs.append(resume)
            until(lambda: any(s["name"] == "cpu-001" for s in lab.servers("lab")), "the resume to boot cpu-001")
            suspend = site.start("suspend", "cpu-002")
            procs.append(suspend)
            until(lambda: released(config.history_path, "cpu-002"), "the suspend to record its release")
            assert resume.poll() is None and suspend.poll() is None
        finally:
            os.close(held)
            for proc in procs:
                try:
                    proc.wait(60)
                finally:
                    proc.kill()
        assert [p.returncode for p in procs] == [0, 0]

        live = [s for s in lab.servers("lab") if s["task_state"] != "deleting"]
        assert [s["name"] for s in live] == ["cpu-001"]
        creates = [r for r in lab.requests("lab") if r["endpoint"].startswith("POST") and "servers" in r["endpoint"]]
        assert len(creates) == 2, "one create for cpu-002 before, one for cpu-001: none for cpu-002 after"
        cancelled = [e for e in site.log_events() if e.get("event") == "resume.cancelled"]
        assert [e.get("node") for e in cancelled] == ["cpu-002"]
        assert not [c for c in site.calls() if "state=" in " ".join(c) and "cpu-002" in " ".join(c)]
