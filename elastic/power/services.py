"""The collaborators a flow works with, passed in so the flows are tested without HTTP or scontrol."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from elastic.cloud import Cloud
from elastic.config import Config
from elastic.fleet import Fleet
from elastic.history import CloudDown, PendingDelete, Problem
from elastic.served import Served


class SlurmControl(Protocol):
    def set_state(self, names: Sequence[str], state: str, reason: str | None = None) -> None: ...
    def update_addresses(self, addrs: Mapping[str, str], hostnames: Mapping[str, str] | None = None) -> None: ...


class FailureMemory(Protocol):
    """What runs leave for later runs (elastic.history.History; elastic.testing.MemoryHistory)."""

    def record_cloud_failure(self, cloud: str, pool: str, kind: str, now: float) -> None: ...
    def cooling_down(self, cloud: str, pool: str, now: float, cooldown_seconds: float) -> bool: ...
    def clear_cloud_failure(self, cloud: str, pool: str) -> None: ...
    def clouds_down(self) -> Mapping[str, CloudDown]: ...
    def mark_cloud_down(self, cloud: str, error: str, now: float) -> None: ...
    def mark_cloud_up(self, cloud: str) -> None: ...
    def problems(self) -> Mapping[str, Mapping[str, Problem]]: ...
    def record_problem(self, cloud: str, pool: str, kind: str, error: str, now: float) -> None: ...
    def clear_problem(self, cloud: str, pool: str) -> None: ...
    def pending_deletes(self) -> Mapping[str, Mapping[str, PendingDelete]]: ...
    def add_pending_deletes(self, entries: dict[str, dict[str, str]], now: float) -> None: ...
    def clear_pending_deletes(self, node_clouds: dict[str, list[str]]) -> None: ...
    def record_node_failures(self, nodes: list[str], now: float,
                             window_seconds: float | None = None) -> dict[str, int]: ...
    def releases(self) -> Mapping[str, float]: ...
    def record_releases(self, nodes: list[str], now: float,
                        deletes: dict[str, dict[str, str]] | None = None) -> None: ...


class BootTimes(Protocol):
    """Each cloud's expected boot time, learned by earlier runs (elastic.pacing.BootMemory)."""

    def expected(self, cloud: str) -> float | None: ...
    def record(self, cloud: str, seen: list[float]) -> None: ...


class ServedWith(Protocol):
    """The server each node was last served with (elastic.served.ServedServers)."""

    def record(self, cluster: str, servers: Mapping[str, Served]) -> None: ...
    def take(self, cluster: str, nodes: Iterable[str]) -> dict[str, Served]: ...


def _no_locks(names: Iterable[str]) -> AbstractContextManager[frozenset[str]]:
    return contextlib.nullcontext(frozenset(names))


@dataclass
class Services:
    config: Config
    clouds: Mapping[str, Cloud]
    slurm: SlurmControl
    history: FailureMemory
    log: FilteringBoundLogger
    clock: Callable[[], float] = time.time
    # Only for the durations the logs show; deadlines are on `clock`.
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # Takes the nodes' locks that no other run holds, without waiting, and yields their names
    # (elastic.locks.free_node_locks); the flows come back for the others.
    locks: Callable[[Iterable[str]], AbstractContextManager[frozenset[str]]] = field(default=_no_locks)
    boots: BootTimes | None = None  # None: nothing known of boot times, poll at the steady cadence
    served: ServedWith | None = None  # None: a suspend deletes what its look finds, after the look

    def fleet(self) -> Fleet:
        """The clouds as one, behind their breakers, for one run."""
        return Fleet(self.config, self.clouds, self.history, log=self.log, clock=self.clock,
                     monotonic=self.monotonic, sleep=self.sleep)
