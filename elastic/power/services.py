"""The collaborators a flow works with, passed in so the flows are tested without HTTP or scontrol."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ContextManager, Protocol

from elastic.cloud import Cloud
from elastic.config import Config


class SlurmControl(Protocol):
    def set_state(self, names: Sequence[str], state: str, reason: str | None = None) -> None: ...
    def update_addresses(self, addrs: Mapping[str, str], hostnames: Mapping[str, str] | None = None) -> None: ...


class FailureMemory(Protocol):
    def record_cloud_failure(self, cloud: str, pool: str, kind: str, now: float) -> None: ...
    def cooling_down(self, cloud: str, pool: str, now: float, cooldown_seconds: float) -> bool: ...
    def clear_cloud_failure(self, cloud: str, pool: str) -> None: ...
    def record_node_failure(self, node: str, now: float) -> None: ...
    def node_failures(self, node: str, now: float, window_seconds: float) -> int: ...


def _no_locks(names: Iterable[str]) -> ContextManager[None]:
    return contextlib.nullcontext()


@dataclass
class Services:
    config: Config
    clouds: Mapping[str, Cloud]
    slurm: SlurmControl
    history: FailureMemory
    log: Any  # a structlog BoundLogger
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    locks: Callable[[Iterable[str]], ContextManager[None]] = field(default=_no_locks)
