"""Build the real collaborators from a loaded config: the only place that wires them together."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from elastic.cloud import OpenStackCloud
from elastic.config import Config
from elastic.errors import LocalError
from elastic.history import History
from elastic.locks import node_locks
from elastic.pacing import BootMemory, Pacer
from elastic.power.services import Services
from elastic.slurm import Slurm, find_command, subprocess_runner


def make_slurm(config: Config) -> Slurm:
    scontrol = find_command("scontrol", str(config.slurm.scontrol) if config.slurm.scontrol else None)
    return Slurm(subprocess_runner(), scontrol=scontrol)


PACING_FILE = "pacing.json"


def make_clouds(config: Config, clock: Callable[[], float] = time.time) -> dict[str, OpenStackCloud]:
    """One OpenStackCloud per configured cloud, each paced by what every run on this controller
    learned of it (state_dir/pacing.json; see elastic.pacing)."""
    shared = config.state_dir / PACING_FILE if config.state_dir.is_dir() else None

    def warn(message: str) -> None:
        structlog.get_logger().warning("pacing.unshared", error=message)

    return {name: OpenStackCloud(name, cloud, clock=clock,
                                 pacer=Pacer(name, ceiling=cloud.rate_ceiling, clock=clock, sleep=time.sleep,
                                             shared=shared, warn=warn))
            for name, cloud in config.clouds.items()}


def ensure_state_dir(config: Config) -> Path:
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        config.lock_dir.mkdir(exist_ok=True, mode=0o750)
    except OSError as exc:
        raise LocalError(f"cannot create state_dir {config.state_dir}: {exc.strerror or exc}") from None
    return config.state_dir


def make_services(config: Config, log: FilteringBoundLogger) -> Services:
    ensure_state_dir(config)
    clock = time.time
    return Services(
        config=config,
        clouds=make_clouds(config, clock),
        slurm=make_slurm(config),
        history=History(config.history_path, on_error=lambda message: log.error("history.unsaved", error=message)),
        log=log,
        clock=clock,
        monotonic=time.monotonic,
        sleep=time.sleep,
        locks=functools.partial(node_locks, config.lock_dir, timeout=config.timeouts.lock),
        boots=BootMemory(config.state_dir / PACING_FILE,
                         warn=lambda message: log.warning("pacing.unsaved", error=message)),
    )
