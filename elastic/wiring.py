"""Build the real collaborators from a loaded config: the only place that wires them together."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from elastic.cloud import OpenStackCloud
from elastic.config import Config
from elastic.errors import LocalError
from elastic.history import History
from elastic.locks import free_node_locks
from elastic.lookups import LookupCache
from elastic.pacing import BootMemory, Pacer
from elastic.power.services import Services
from elastic.served import ServedServers
from elastic.slurm import Slurm, find_command, subprocess_runner
from elastic.tokens import TokenCache


def make_slurm(config: Config) -> Slurm:
    scontrol = find_command("scontrol", str(config.slurm.scontrol) if config.slurm.scontrol else None)
    return Slurm(subprocess_runner(), scontrol=scontrol)


PACING_FILE = "pacing.json"
TOKEN_FILE = "tokens.json"  # Keystone tokens and catalogs, 0600 (elastic.tokens)
LOOKUP_FILE = "lookups.json"  # flavor, image and network ids by name, 0600 (elastic.lookups)
SERVED_FILE = "served.json"  # the server each node was last served with, 0600 (elastic.served)
CACHE_DIR = "cache"  # XDG_CACHE_HOME of a run without HOME: stevedore's entry-point cache


def keep_caches_in(state_dir: Path) -> None:
    """keystoneauth finds its auth plugin through stevedore, which scans the entry points of every
    installed package and keeps the result in $XDG_CACHE_HOME or ~/.cache. slurmctld starts us
    without HOME, and Debian's slurm user has /nonexistent as its home: every run rescanned them
    (~30 ms of a one-node suspend) and failed to create the directory. Such a run keeps that cache
    in the state dir instead; a run with HOME or XDG_CACHE_HOME set (an admin's) keeps its own.
    Before openstacksdk is imported: stevedore reads the variable once, at its import."""
    if "HOME" not in os.environ and "XDG_CACHE_HOME" not in os.environ:
        os.environ["XDG_CACHE_HOME"] = str(state_dir / CACHE_DIR)


def make_clouds(config: Config, clock: Callable[[], float] = time.time,
                log: FilteringBoundLogger | None = None) -> dict[str, OpenStackCloud]:
    """One OpenStackCloud per configured cloud, each paced by what every run on this controller
    learned of it (state_dir/pacing.json; see elastic.pacing), sharing their Keystone tokens
    (state_dir/tokens.json; see elastic.tokens) and the ids their names resolved to
    (state_dir/lookups.json; see elastic.lookups). Without `log`, warnings about those files go
    to stderr."""
    shared = config.state_dir / PACING_FILE if config.state_dir.is_dir() else None
    logger = log if log is not None else structlog.wrap_logger(structlog.PrintLogger(sys.stderr))

    def warn(message: str) -> None:
        logger.warning("pacing.unshared", error=message)

    def warn_tokens(message: str) -> None:
        logger.warning("tokens.uncached", error=message)

    def warn_lookups(message: str) -> None:
        logger.warning("lookups.uncached", error=message)

    if shared:
        keep_caches_in(config.state_dir)
    tokens = TokenCache(config.state_dir / TOKEN_FILE, clock=clock, warn=warn_tokens) if shared else None
    lookups = LookupCache(config.state_dir / LOOKUP_FILE, clock=clock, warn=warn_lookups) if shared else None
    return {name: OpenStackCloud(name, cloud, clock=clock,
                                 pacer=Pacer(name, ceiling=cloud.rate_ceiling, clock=clock, sleep=time.sleep,
                                             shared=shared, warn=warn),
                                 tokens=tokens, lookups=lookups)
            for name, cloud in config.clouds.items()}


def close_clouds(clouds: Mapping[str, object]) -> None:
    """A finished run leaves the clouds' shared pacing (OpenStackCloud.close): the runs Slurm starts
    next (a resume right after a suspend) would otherwise divide each cloud's rate with it for
    HEARTBEAT_SECONDS, slowing their first seconds of creates to a half or a third."""
    for cloud in clouds.values():
        if isinstance(cloud, OpenStackCloud):
            cloud.close()


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
        clouds=make_clouds(config, clock, log=log),
        slurm=make_slurm(config),
        history=History(config.history_path, on_error=lambda message: log.error("history.unsaved", error=message)),
        log=log,
        clock=clock,
        monotonic=time.monotonic,
        sleep=time.sleep,
        locks=functools.partial(free_node_locks, config.lock_dir),
        boots=BootMemory(config.state_dir / PACING_FILE,
                         warn=lambda message: log.warning("pacing.unsaved", error=message)),
        served=ServedServers(config.state_dir / SERVED_FILE,
                             warn=lambda message: log.warning("served.unsaved", error=message)),
    )
