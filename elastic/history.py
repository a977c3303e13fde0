"""What one run leaves for the next, in one small JSON file in the state dir:

- clouds: a pool's cloud that refused with quota/capacity (for a cool-down);
- health: clouds that did not answer (a circuit breaker: the next runs probe them briefly);
- problems: a cloud's permanent errors per pool (auth, config, a missing image), for status/check;
- pending: deletes that could not happen (the cloud did not answer), retried when it does;
- nodes: node resume failures (ResumeFail's repeated-failure policy);
- released: when a suspend or resume-fail last started releasing each node (a resume that started
  before that does not boot the node: Slurm already counts it as powered down).

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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypedDict

from elastic.errors import ElasticError
from elastic.locks import exclusive_lock

# A node that keeps failing is cut off long before this; the cap only bounds the file.
MAX_NODE_FAILURES = 100
# How a release marks the deletes it is carrying out now (`f"{why}: {UNDER_WAY}"`).
UNDER_WAY = "under way"


class CloudDown(TypedDict):
    """A cloud that gave a run no answer (`clouds_down`)."""

    since: float  # the first run it did not answer, of those in a row
    at: float  # the last one
    error: str


class Problem(TypedDict):
    """A cloud's permanent error for a pool (`problems`): auth, config, a missing image."""

    kind: str  # a CloudErrorKind value
    error: str
    at: float


class PendingDelete(TypedDict):
    """A delete that could not happen on a cloud (`pending_deletes`)."""

    since: float
    why: str


class HistoryView(Protocol):
    """What the admin commands read of the history (History; elastic.testing.MemoryHistory)."""

    def clouds_down(self) -> Mapping[str, CloudDown]: ...
    def problems(self) -> Mapping[str, Mapping[str, Problem]]: ...
    def pending_deletes(self) -> Mapping[str, Mapping[str, PendingDelete]]: ...


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
        self._drop("clouds", cloud, pool)

    # ---- health: a cloud that did not answer is probed briefly by the next runs ------------------

    def clouds_down(self) -> dict[str, CloudDown]:
        """The clouds whose last call got no answer."""
        down: dict[str, CloudDown] = self._read()["health"]  # its shape checked by _valid
        return down

    def mark_cloud_down(self, cloud: str, error: str, now: float) -> None:
        with self._update() as data:
            since = data["health"].get(cloud, {}).get("since", now)
            data["health"][cloud] = {"since": since, "error": error, "at": now}

    def mark_cloud_up(self, cloud: str) -> None:
        with self._update() as data:
            data["health"].pop(cloud, None)

    # ---- problems: permanent errors of a cloud for a pool, until it serves the pool again -------

    def problems(self) -> dict[str, dict[str, Problem]]:
        """{cloud: {pool: problem}}."""
        problems: dict[str, dict[str, Problem]] = self._read()["problems"]  # its shape checked by _valid
        return problems

    def record_problem(self, cloud: str, pool: str, kind: str, error: str, now: float) -> None:
        with self._update() as data:
            data["problems"].setdefault(cloud, {})[pool] = {"kind": kind, "error": error, "at": now}

    def clear_problem(self, cloud: str, pool: str) -> None:
        self._drop("problems", cloud, pool)

    def _drop(self, section: str, cloud: str, pool: str) -> None:
        """Remove one pool's entry of a cloud in `section`, and the cloud once it has none."""
        with self._update() as data:
            pools = data[section].get(cloud, {})
            pools.pop(pool, None)
            if not pools:
                data[section].pop(cloud, None)

    # ---- pending deletes: servers that may sit on a cloud that did not answer ------------------

    def pending_deletes(self) -> dict[str, dict[str, PendingDelete]]:
        """{node: {cloud: pending}}: every server of ours named for the node on that cloud is to be
        deleted (none may be adopted) once the cloud answers."""
        pending: dict[str, dict[str, PendingDelete]] = self._read()["pending"]  # its shape checked by _valid
        return pending

    def add_pending_deletes(self, entries: dict[str, dict[str, str]], now: float) -> None:
        """`entries`: {node: {cloud: why}}, as in `add_pending`."""
        if not any(entries.values()):
            return
        with self._update() as data:
            add_pending(data["pending"], entries, now)

    def clear_pending_deletes(self, node_clouds: dict[str, list[str]]) -> None:
        if not any(cloud in self._read()["pending"].get(node, {}) for node, clouds in node_clouds.items()
                   for cloud in clouds):
            return
        with self._update() as data:
            for node, clouds in node_clouds.items():
                entry = data["pending"].get(node, {})
                for cloud in clouds:
                    entry.pop(cloud, None)
                if not entry:
                    data["pending"].pop(node, None)

    # ---- nodes: repeated resume failures leave a node DOWN instead of burning quota -------------

    def record_node_failure(self, node: str, now: float) -> None:
        self.record_node_failures([node], now)

    def record_node_failures(self, nodes: list[str], now: float, window_seconds: float | None = None) -> dict[str, int]:
        """Count one failure for each node, in one locked write; returns each node's failures within
        `window_seconds` before `now` (all kept ones when None), older ones being forgotten."""
        counts: dict[str, int] = {}
        with self._update() as data:
            for node in dict.fromkeys(nodes):
                times = data["nodes"].setdefault(node, [])
                if window_seconds is not None:
                    times[:] = [t for t in times if now - t < window_seconds]
                times.append(now)
                del times[:-MAX_NODE_FAILURES]
                counts[node] = len(times)
        return counts

    def node_failures(self, node: str, now: float, window_seconds: float) -> int:
        """Failures of `node` within `window_seconds` before `now`; older ones are forgotten."""
        with self._update() as data:
            recent = [t for t in data["nodes"].get(node, []) if now - t < window_seconds]
            if recent:
                data["nodes"][node] = recent
            else:
                data["nodes"].pop(node, None)
            return len(recent)

    # ---- released: when a suspend (or resume-fail) last started giving a node back -------------

    def releases(self) -> dict[str, float]:
        """{node: when the last suspend or resume-fail of it started}."""
        released: dict[str, float] = self._read()["released"]  # its shape checked by _valid
        return released

    def record_releases(self, nodes: list[str], now: float, deletes: dict[str, dict[str, str]] | None = None) -> None:
        """Note that a release of `nodes` started at `now`, and with it the pending `deletes` (as in
        `add_pending_deletes`), in one locked write: a run killed after it has both or neither."""
        if not nodes:
            return
        with self._update() as data:
            for node in nodes:
                data["released"][node] = max(now, data["released"].get(node, now))
            add_pending(data["pending"], deletes or {}, now)

    # ---- the file --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        """One locked read-modify-write; the file is rewritten only when the data changed.

        Without the lock the body still runs, on what could be read, and its change is dropped.
        """
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(self.path.with_name(self.path.name + ".lock"), self.lock_timeout))
            except ElasticError as error:
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
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    os.fchmod(handle.fileno(), 0o640)
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


def add_pending(pending: dict[str, dict[str, Any]], entries: dict[str, dict[str, str]], now: float) -> None:
    """Add `entries` ({node: {cloud: why}}) to `pending`: an entry already there keeps its first time,
    and its why unless that only said the delete was under way (the new why says what stopped it)."""
    for node, clouds in entries.items():
        for cloud, why in clouds.items():
            entry = pending.setdefault(node, {}).setdefault(cloud, {"since": now, "why": why})
            if entry["why"].endswith(UNDER_WAY):
                entry["why"] = why


def _empty() -> dict[str, Any]:
    return {"clouds": {}, "nodes": {}, "health": {}, "problems": {}, "pending": {}, "released": {}}


def _valid(raw: Any) -> dict[str, Any]:
    """The well-formed part of what was read; anything else is dropped."""
    data = _empty()
    if not isinstance(raw, dict):
        return data
    for section, times, texts, nested in (("clouds", ("at",), ("kind",), True),
                                          ("health", ("since", "at"), ("error",), False),
                                          ("problems", ("at",), ("kind", "error"), True),
                                          ("pending", ("since",), ("why",), True)):
        entries = raw.get(section)
        if nested and isinstance(entries, dict):
            data[section] = {key: kept for key, inner in entries.items() if (kept := _timed(inner, times, texts))}
        elif not nested:
            data[section] = _timed(entries, times, texts)
    nodes = raw.get("nodes")
    if isinstance(nodes, dict):
        for node, times in nodes.items():
            if isinstance(times, list):
                kept_times = [float(t) for t in times if _is_number(t)]
                if kept_times:
                    data["nodes"][node] = kept_times
    released = raw.get("released")
    if isinstance(released, dict):
        data["released"] = {node: float(at) for node, at in released.items() if _is_number(at)}
    return data


def _timed(entries: Any, times: tuple[str, ...], texts: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The well-formed entries of {name: {time keys: numbers, text keys: strings}}."""
    if not isinstance(entries, dict):
        return {}
    return {name: {**{key: float(entry[key]) for key in times}, **{key: str(entry.get(key, "")) for key in texts}}
            for name, entry in entries.items()
            if isinstance(entry, dict) and all(_is_number(entry.get(key)) for key in times)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
