"""power_down_force of a booting node (issue 10): the suspend Slurm starts takes the node's lock
before the resume that was started first; the resume then boots nothing for that node."""

from __future__ import annotations

import fcntl
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


def has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` holds `path` open (a node lock it waits for or holds)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


def test_a_suspend_holding_the_lock_while_the_resume_waits_leaves_no_server(tmp_path):
    """Resume cpu-[001-002] waits for cpu-001's lock; a suspend of cpu-002, started after it, holds
    cpu-002's lock through a slow delete while the resume waits for it: the resume boots cpu-001
    only, cancels cpu-002 without a Slurm state change, and no server is left for cpu-002."""
    cloud = {"boot_seconds": 0.3, "delete_seconds": 2.0, "flavors": FLAVORS, "images": [{"name": "debian-12"}],
             "networks": [{"name": "private", "cidr": "127.11.0.0/16"}]}
    with LabCloud({"clouds": {"lab": cloud}}) as lab:
        site = make_site(tmp_path / "site")
        clouds_yaml = lab.write_clouds_yaml(site.root / "clouds.yaml")
        config_path = site.write_config(config_text(site, clouds_yaml, pools=POOL))
        lock_dir = load_config(config_path).lock_dir
        assert site.run("resume", "cpu-002").returncode == 0  # the booting node's server
        assert [s["name"] for s in lab.servers("lab")] == ["cpu-002"]

        lock_dir.mkdir(parents=True, exist_ok=True)
        held = os.open(lock_dir / "cpu-001.lock", os.O_RDWR | os.O_CREAT, 0o640)
        procs = []
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            resume = site.start("resume", "cpu-[001-002]")
            procs.append(resume)
            until(lambda: has_open(resume.pid, lock_dir / "cpu-001.lock"), "the resume to wait for cpu-001")
            suspend = site.start("suspend", "cpu-002")
            procs.append(suspend)
            until(lambda: any(r["endpoint"].startswith("DELETE") for r in lab.requests("lab")),
                  "the suspend to delete cpu-002's server")
            assert resume.poll() is None
        finally:
            os.close(held)  # the resume takes cpu-001, then waits for the suspend's cpu-002
            for proc in procs:
                try:
                    proc.wait(60)
                finally:
                    proc.kill()
        assert [p.returncode for p in procs] == [0, 0]

        live = [s for s in lab.servers("lab") if s["task_state"] != "deleting"]
        assert [s["name"] for s in live] == ["cpu-001"]
        cancelled = [e for e in site.log_events() if e.get("event") == "resume.cancelled"]
        assert [e.get("node") for e in cancelled] == ["cpu-002"]
        assert not [c for c in site.calls() if "state=" in " ".join(c) and "cpu-002" in " ".join(c)]
