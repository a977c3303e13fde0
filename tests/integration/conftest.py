"""Fixtures about the lab OpenStack emulator: started clouds that are always stopped, and real
openstacksdk connections to them through a written clouds.yaml."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from elastic.lab.cloud import LabCloud

from tests.support.lab import FAST


@pytest.fixture
def make_lab() -> Callable[..., LabCloud]:
    """make_lab(config, **kwargs) -> a started LabCloud, stopped at teardown."""
    labs: list[LabCloud] = []

    def make(config: dict | None = None, **kwargs: Any) -> LabCloud:
        lab = LabCloud(config, **kwargs)
        lab.start()
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()


@pytest.fixture
def lab(make_lab) -> LabCloud:
    """One cloud named `lab` with a fast lifecycle."""
    return make_lab({"clouds": {"lab": dict(FAST)}})


@pytest.fixture
def sdk(tmp_path, monkeypatch) -> Callable[..., Any]:
    """sdk(lab, cloud="lab", **options) -> openstack.connect(cloud=...) over a clouds.yaml that
    lab wrote, found through OS_CLIENT_CONFIG_FILE; closed at teardown."""
    import openstack

    for name in [n for n in os.environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)
    connections = []

    def connect(lab: LabCloud, cloud: str = "lab", **options: Any):
        path = lab.write_clouds_yaml(tmp_path / f"clouds-{lab.url.rsplit(':', 1)[1]}.yaml")
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
        conn = openstack.connect(cloud=cloud, **options)
        connections.append(conn)
        return conn

    yield connect
    for conn in connections:
        conn.close()


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """eventually(probe, timeout=5) -> probe's first truthy result, polling; fails at the deadline."""

    def poll(probe: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met within {timeout} s: {getattr(probe, '__name__', probe)}")
            time.sleep(interval)

    return poll
