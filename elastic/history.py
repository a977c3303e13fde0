"""What one run leaves for the next: cloud failures (for a cool-down) and node resume failures.

Each Slurm program is a short process, so memory between runs lives in one small JSON file in the
state dir. Every change is one read-modify-write under a file lock, written to a temporary file
and renamed over the old one, so a reader never sees half a file. A missing or unreadable file
is an empty history, and a change that cannot be saved (disk full, lock held too long) is
reported through `on_error` and dropped: this is advice for the flows, never a reason to stop
serving nodes.

Times are passed in (`now`, from the flows' injected clock); nothing here reads a clock.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from elastic.errors import ConfigError, LockTimeout
from elastic.locks import exclusive_lock

# A node that keeps failing is cut off long before this; the cap only bounds the file.
MAX_NODE_FAILURES = 100


class History:
    """The FailureMemory of the flows, kept in `path` (JSON), guarded by `path`.lock."""

    def __init__(self, path: Path, on_error: Callable[[str], None], lock_timeout: float = 10):
        self.path = Path(path)
        self.on_error = on_error
        self.lock_timeout = lock_timeout

    # ---- clouds: a pool's cloud that failed with quota/capacity is skipped for a while ----------

    def record_cloud_failure(self, cloud: str, pool: str, kind: str, now: float) -> None:
        with self._update() as data:
            data["clouds"].setdefault(cloud, {})[pool] = {"kind": kind, "at": now}

    def cooling_down(self, cloud: str, pool: str, now: float, cooldown_seconds: float) -> bool:
        """True when this cloud failed for this pool less than `cooldown_seconds` before `now`."""
        entry = self._read()["clouds"].get(cloud, {}).get(pool)
        return entry is not None and now - entry["at"] < cooldown_seconds

    def clear_cloud_failure(self, cloud: str, pool: str) -> None:
        with self._update() as data:
            pools = data["clouds"].get(cloud, {})
            pools.pop(pool, None)
            if not pools:
                data["clouds"].pop(cloud, None)

    # ---- nodes: repeated resume failures leave a node DOWN instead of burning quota -------------

    def record_node_failure(self, node: str, now: float) -> None:
        with self._update() as data:
            times = data["nodes"].setdefault(node, [])
            times.append(now)
            del times[:-MAX_NODE_FAILURES]

    def node_failures(self, node: str, now: float, window_seconds: float) -> int:
        """Failures of `node` within `window_seconds` before `now`; older ones are forgotten."""
        with self._update() as data:
            recent = [t for t in data["nodes"].get(node, []) if now - t < window_seconds]
            if recent:
                data["nodes"][node] = recent
            else:
                data["nodes"].pop(node, None)
            return len(recent)

    def clear_node_failures(self, node: str) -> None:
        with self._update() as data:
            data["nodes"].pop(node, None)

    # ---- the file --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        """One locked read-modify-write; the file is rewritten only when the data changed.

        Without the lock the body still runs, on what could be read, and its change is dropped.
        """
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(self.path.with_name(self.path.name + ".lock"), self.lock_timeout))
            except (LockTimeout, ConfigError) as error:
                self.on_error(f"history change not saved: {error}")
                yield self._read()
                return
            data = self._read()
            before = copy.deepcopy(data)
            yield data
            if data != before:
                self._write(data)

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return _empty()
        return _valid(raw)

    def _write(self, data: dict[str, Any]) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    os.fchmod(handle.fileno(), 0o644)
                    json.dump({"version": 1, **data}, handle, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            self.on_error(f"history change not saved: {self.path}: cannot write history: {exc.strerror or exc}")


def _empty() -> dict[str, Any]:
    return {"clouds": {}, "nodes": {}}


def _valid(raw: Any) -> dict[str, Any]:
    """The well-formed part of what was read; anything else is dropped."""
    data = _empty()
    if not isinstance(raw, dict):
        return data
    clouds = raw.get("clouds")
    if isinstance(clouds, dict):
        for cloud, pools in clouds.items():
            if not isinstance(pools, dict):
                continue
            kept = {pool: {"kind": str(entry.get("kind", "")), "at": float(entry["at"])}
                    for pool, entry in pools.items() if isinstance(entry, dict) and _is_number(entry.get("at"))}
            if kept:
                data["clouds"][cloud] = kept
    nodes = raw.get("nodes")
    if isinstance(nodes, dict):
        for node, times in nodes.items():
            if isinstance(times, list):
                kept_times = [float(t) for t in times if _is_number(t)]
                if kept_times:
                    data["nodes"][node] = kept_times
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
