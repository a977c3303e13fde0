"""Builders shared by the power-flow unit tests: a config with two pools on two memory clouds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import structlog

from elastic.config import load_config
from elastic.power.services import Services
from elastic.served import ServedServers
from elastic.testing import FakeClock, MemoryCloud, MemoryHistory, RecordingSlurm

CONFIG = """\
cluster: test
clouds:
  alpha: {clouds_yaml: clouds.yaml, cooldown: 300}
  beta: {clouds_yaml: clouds.yaml}
pools:
  cpu:
    nodes: cpu-[001-004]
    slurm: {cpus: 1, real_memory: 1000}
    boot: {flavor: m1.small, image: debian-12}
    clouds:
      - {cloud: alpha, network: private}
      - {cloud: beta, network: private}
  gpu:
    nodes: gpu-[1-2]
    slurm: {cpus: 1, real_memory: 1000}
    boot: {flavor: m1.small, image: debian-12}
    clouds:
      - {cloud: beta, network: private, max_nodes: 1}
timeouts: {boot: 60, delete: 30, poll: 5}
resume_fail: {max_failures: 2, window: 600}
"""


def make_services(tmp_path: Path, extra: str = "",
                  config_text: str = CONFIG) -> tuple[Services, dict[str, MemoryCloud], RecordingSlurm, FakeClock]:
    path = tmp_path / "elastic.yaml"
    path.write_text(config_text + textwrap.dedent(extra))
    config = load_config(path)
    clouds = {name: MemoryCloud(name) for name in config.clouds}
    slurm = RecordingSlurm()
    clock = FakeClock()
    services = Services(config=config, clouds=clouds, slurm=slurm, history=MemoryHistory(),
                        log=structlog.wrap_logger(structlog.testing.CapturingLogger()), clock=clock, monotonic=clock,
                        sleep=clock.sleep, served=ServedServers(tmp_path / "served.json"))
    return services, clouds, slurm, clock


def held_by_another_run(busy: set[str], *, for_takes: int):
    """Services.locks under which `busy` are held by another run for the first `for_takes` takes;
    returns it and the list its takes are counted in."""
    from contextlib import contextmanager

    takes: list[int] = []

    @contextmanager
    def locks(names):
        takes.append(1)
        names = set(names)
        yield frozenset(names - busy if len(takes) <= for_takes else names)

    return locks, takes


def released_at_the_first_pause(svc, clock, node: str = "cpu-001", then=lambda: None) -> None:
    """A suspend of `node`, which found its lock held, records the release during the resume's first
    pause; `then` runs at every later pause."""
    real_sleep = svc.sleep

    def sleep(seconds: float) -> None:
        real_sleep(seconds)
        if not svc.history.releases():
            svc.history.record_releases([node], clock())
        else:
            then()

    svc.sleep = sleep
