"""Adaptive request pacing per cloud (AIMD), shared by the runs on one controller.

A run starts fast: at START_RATE requests a second, doubling every second (a slow start, as
TCP's) until it is past UNPACED_ABOVE, where only `max_parallel` bounds how many requests are in
flight; the slow start costs a large burst about a second and keeps the first refusals of a strict
cloud to one or two instead of a whole pool's worth. A run past its slow start that sent START_RATE
requests or more within a second without a refusal says so in the shared file (`unpaced_at`), and a
run that starts within FORGET_AFTER of it, with no refusal since, skips the slow start: the cloud
took such a burst from this controller a few minutes ago. When the cloud
answers 429 (or 503, or 413 overLimit), its rate is set to half of what we were sending, nothing
is sent before its Retry-After, and the rate grows again by a fixed step each second without
another refusal (additive increase; the step is a fifth of the halved rate, so a cloud is back at
its old rate about five seconds later). Once the rate has grown past UNPACED_ABOVE the cloud is
unpaced again. An optional hard ceiling (`max_rate` in the YAML, for a cloud behind a strict
proxy) is never exceeded. Refusals of requests sent before the last decrease do not halve again:
a burst of 429s from the requests already in flight is one signal, not twenty.

Slurm starts one process per resume or suspend, and several may run at once. Each cloud's state
lives in one small JSON file in the state dir (`pacing.json`), read-modify-written under a file
lock: a refusal seen by one run slows the others at their next sync (about once a second), and
while a cloud is paced its rate is divided among the runs that use it (each run writes a heartbeat),
so three resumes at once do not triple the load on a cloud that just said 429. A refusal older than
FORGET_AFTER is forgotten by new runs. The file is advice:
an unreadable, broken or locked file is ignored with a warning and the run paces on its own.

The decisions are plain functions of (state, now); `Pacer` holds the threads' lock and the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from elastic.errors import ElasticError
from elastic.locks import exclusive_lock

# A run's first rate, doubled every second until the first refusal.
START_RATE = 200.0
# Above this many requests a second we stop pacing: max_parallel and the latency bound us first.
UNPACED_ABOVE = 1000.0
# The rate never drops below this (requests per second), however many refusals come.
FLOOR = 0.5
# A run whose heartbeat is older than this no longer counts as sharing a cloud's rate.
HEARTBEAT_SECONDS = 5.0
# How often a run reads and writes the shared file while it sends requests.
SYNC_SECONDS = 1.0
# A refusal older than this is forgotten by new runs: they slow-start again.
FORGET_AFTER = 900.0
# How long to wait for the shared file's lock before pacing alone for a while.
LOCK_TIMEOUT = 0.5


@dataclass(frozen=True)
class PaceState:
    """What we know of one cloud's appetite (times are epoch seconds, from the injected clock)."""

    rate: float | None = None  # requests a second all runs together may send; None: unpaced
    at: float = 0.0  # when `rate` was set: it grows from then
    slow_start: bool = False  # growing by doubling each second (no refusal seen yet)
    step: float = 0.0  # additive increase, requests a second per second without refusal
    throttled_at: float | None = None  # the last decrease
    blocked_until: float = 0.0  # nothing is sent before this (Retry-After)


def current_rate(state: PaceState, now: float, ceiling: float | None) -> float | None:
    """The rate allowed at `now` (None: unpaced), after additive growth since the last decrease."""
    if state.rate is None:
        return ceiling
    elapsed = max(0.0, now - state.at)
    if state.slow_start:
        grown = state.rate * float(2.0 ** min(elapsed, 64.0))
    else:
        grown = state.rate + state.step * elapsed
    if ceiling is not None:
        return min(grown, ceiling)
    return None if grown >= UNPACED_ABOVE else grown


def throttled(state: PaceState, now: float, *, sent_at: float, retry_after: float | None, observed: float,
              ceiling: float | None) -> PaceState:
    """The state after a refusal (429/503) of a request sent at `sent_at`.

    `observed` is what this run was sending (requests in the last second) when the cloud was
    unpaced. The rate is halved once per signal: a refusal of a request sent before the last
    decrease only extends the block by its Retry-After.
    """
    blocked_until = max(state.blocked_until, now + max(retry_after or 0.0, 0.0))
    if state.throttled_at is not None and sent_at < state.throttled_at:
        return replace(state, blocked_until=blocked_until)
    before = current_rate(state, now, ceiling)
    if before is None or 0 < observed < before:
        before = max(observed, 2 * FLOOR)  # what we really sent, when latency held us below the rate
    rate = max(FLOOR, before / 2)
    return PaceState(rate=rate, at=now, step=max(rate / 5, FLOOR), throttled_at=now, blocked_until=blocked_until)


def fresh(now: float) -> PaceState:
    """A run's state before it knows anything of the cloud: a slow start from `now`."""
    return PaceState(rate=START_RATE, at=now, slow_start=True)


def started(state: PaceState, unpaced_at: float | None, now: float) -> PaceState:
    """A run still in its slow start, told that a run reached the unpaced rate at `unpaced_at`:
    unpaced at once when that is within FORGET_AFTER and no refusal came after it."""
    if not state.slow_start or unpaced_at is None or now - unpaced_at > FORGET_AFTER:
        return state
    if state.throttled_at is not None and state.throttled_at >= unpaced_at:
        return state
    return PaceState(blocked_until=state.blocked_until)


def merged(mine: PaceState, theirs: PaceState, now: float) -> PaceState:
    """Two views of one cloud: the newer decrease wins, unless it is older than FORGET_AFTER (a
    run's own state stays its own); the longer block holds."""
    if theirs.throttled_at is not None and now - theirs.throttled_at > FORGET_AFTER:
        theirs = PaceState(blocked_until=theirs.blocked_until)
    def decreased(state: PaceState) -> float:
        return -math.inf if state.throttled_at is None else state.throttled_at

    newer = mine if decreased(mine) >= decreased(theirs) else theirs
    return replace(newer, blocked_until=max(mine.blocked_until, theirs.blocked_until))


def share(rate: float | None, runs: int) -> float | None:
    """One run's part of a cloud's rate, when `runs` runs use the cloud at once."""
    if rate is None:
        return None
    return rate / max(runs, 1)


def live_runs(heartbeats: dict[str, float], now: float) -> int:
    return sum(1 for seen in heartbeats.values() if now - seen < HEARTBEAT_SECONDS)


# ---- polling: see a server within about a second of ACTIVE, without listing in vain ---------------

# A server is seen at most about this long after it turned ACTIVE (when the list is fast).
SEEN_WITHIN = 1.0
# Before a server is expected ACTIVE, polls are at most this far apart (an early ERROR is seen).
EARLY_POLL_MAX = 5.0


def poll_pause(now: float, *, first_created: float | None, expected_boot: float | None, list_seconds: float,
               fixed: float | None, seen_within: float = SEEN_WITHIN) -> float:
    """Seconds to wait before the next poll of a cloud's servers.

    `fixed` (the admin's timeouts.poll) wins. Otherwise a server is seen within about `seen_within`
    of turning ACTIVE (or gone): the pause plus the list's own duration stay near it, but the list never
    takes more than half the time (a slow list is a loaded cloud). Until the earliest booting
    server (created at `first_created`) is due to be ACTIVE by `expected_boot` (what the last runs
    saw on this cloud), polls are sparser: up to EARLY_POLL_MAX apart, waking a little before it.
    """
    if fixed is not None:
        return fixed
    pause = max(seen_within - list_seconds, list_seconds, 0.1)
    if expected_boot is not None and first_created is not None:
        due = first_created + expected_boot - SEEN_WITHIN / 2
        if due - now > pause:
            pause = min(due - now, EARLY_POLL_MAX)
    return pause


def learned_boot(previous: float | None, seen: list[float]) -> float | None:
    """The expected boot time after a run saw `seen` (seconds from create to ACTIVE seen): the
    run's lower quartile, so the first servers are not missed; the previous value if none."""
    if not seen:
        return previous
    ordered = sorted(seen)
    return max(ordered[len(ordered) // 4], 0.0)


class BootMemory:
    """Each cloud's expected boot time, kept beside its pacing state (`pacing.json`); advice only:
    a file that cannot be read or written is ignored with a warning."""

    def __init__(self, path: Path, warn: Callable[[str], None] = lambda message: None):
        self.path = path
        self._warn = warn

    def expected(self, cloud: str) -> float | None:
        try:
            entry = _read(self.path, self._warn).get(cloud, {})
        except OSError as error:
            self._warn(f"pacing state {self.path} ignored: {error}")
            return None
        value = _number(entry.get("boot_seconds"))
        return value if value is not None and value >= 0 else None

    def record(self, cloud: str, seen: list[float]) -> None:
        try:
            with exclusive_lock(self.path.with_name(self.path.name + ".lock"), LOCK_TIMEOUT):
                data = _read(self.path, self._warn)
                entry = data.setdefault(cloud, {})
                entry["boot_seconds"] = learned_boot(_number(entry.get("boot_seconds")), seen)
                _write(self.path, data)
        except (OSError, ElasticError) as error:
            self._warn(f"pacing state {self.path} not saved: {error}")


class Pacer:
    """The pace of one cloud in this process, for all its threads; optionally shared through a file.

    `wait()` before every request; `refused(retry_after)` when the cloud answered 429/503.
    """

    def __init__(self, cloud: str, *, ceiling: float | None, clock: Callable[[], float],
                 sleep: Callable[[float], None], shared: Path | None = None,
                 warn: Callable[[str], None] = lambda message: None, run_id: str | None = None):
        self.cloud = cloud
        self.ceiling = ceiling if ceiling else None
        self._clock = clock
        self._sleep = sleep
        self._shared = shared
        self._warn = warn
        self._run = run_id or f"{os.getpid()}"
        self._lock = threading.Lock()
        self._state = fresh(clock())
        self._runs = 1
        self._next = 0.0  # the earliest start of the next request (this run)
        self._sent: deque[float] = deque()  # start times of the last second's requests
        self._synced = -math.inf
        self._local = threading.local()
        self._warned = False

    @property
    def state(self) -> PaceState:
        return self._state

    def rate(self) -> float | None:
        """This run's current rate for the cloud (None: unpaced)."""
        with self._lock:
            return share(current_rate(self._state, self._clock(), self.ceiling), self._runs)

    def wait(self) -> None:
        """Block until this thread may send its next request to the cloud."""
        if self._shared is not None and self._clock() - self._synced >= SYNC_SECONDS:
            self.sync()
        while True:
            with self._lock:
                now = self._clock()
                decreased = self._state.throttled_at
                rate = share(current_rate(self._state, now, self.ceiling), self._runs)
                start = max(now, self._state.blocked_until)
                if rate is not None:
                    start = max(start, self._next)
                    self._next = start + 1.0 / rate
            if start > now:
                self._sleep(start - now)
            with self._lock:
                # A refusal while this thread slept slowed the cloud down: take a new, later turn.
                if self._state.throttled_at != decreased:
                    continue
                self._sent.append(start)
                while self._sent and self._sent[0] <= start - 1.0:
                    self._sent.popleft()
                self._local.sent_at = start
                return

    def refused(self, retry_after: float | None) -> None:
        """The cloud refused this thread's last request (429, 503, 413 overLimit)."""
        now = self._clock()
        sent_at = getattr(self._local, "sent_at", now)
        with self._lock:
            observed = float(len(self._sent))
            before = self._state
            self._state = throttled(self._state, now, sent_at=sent_at, retry_after=retry_after,
                                    observed=observed, ceiling=self.ceiling)
            if self._state.throttled_at != before.throttled_at:
                # Every thread waiting for a turn takes a new one at the new rate (wait()), so the
                # turns handed out at the old rate, far ahead by now, are void.
                self._next = self._state.blocked_until
            else:
                self._next = max(self._next, self._state.blocked_until)
        if self._shared is not None and self._state.throttled_at != before.throttled_at:
            self.sync()

    def sync(self) -> None:
        """Merge this run's view with the shared file's and write a heartbeat; never raises."""
        if self._shared is None:
            return
        now = self._clock()
        self._synced = now
        try:
            with self._file() as data:
                entry = data.setdefault(self.cloud, {})
                theirs = _state_from(entry.get("state"))
                with self._lock:
                    self._state = started(merged(self._state, theirs, now), _number(entry.get("unpaced_at")), now)
                    if self._state.throttled_at is not None:  # a slow start is each run's own
                        entry["state"] = _state_to(self._state)
                    elif (current_rate(self._state, now, None) is None
                          and sum(1 for sent in self._sent if sent > now - 1.0) >= START_RATE):
                        # The cloud took a burst of this run's at the unpaced rate without a refusal
                        # (not merely a run that lived past its slow start, or skipped it).
                        entry["unpaced_at"] = now
                    beats = {run: seen for run, seen in _heartbeats(entry.get("runs")).items()
                             if now - seen < HEARTBEAT_SECONDS}
                    beats[self._run] = now
                    entry["runs"] = beats
                    self._runs = max(1, live_runs(beats, now))
        except (OSError, ElasticError, ValueError) as error:
            if not self._warned:
                self._warned = True
                self._warn(f"pacing state {self._shared} ignored: {error}")

    def close(self) -> None:
        """This run stops using the cloud: its heartbeat goes, so the others' share grows at once."""
        if self._shared is None or self._synced == -math.inf:
            return
        try:
            with self._file() as data:
                runs = data.get(self.cloud, {}).get("runs")
                if isinstance(runs, dict):
                    runs.pop(self._run, None)
        except (OSError, ElasticError, ValueError):
            pass

    @contextlib.contextmanager
    def _file(self) -> Iterator[dict[str, Any]]:
        assert self._shared is not None
        path = self._shared
        with exclusive_lock(path.with_name(path.name + ".lock"), LOCK_TIMEOUT):
            data = _read(path, self._warn_once)
            yield data
            _write(path, data)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            self._warn(message)


def _read(path: Path, warn: Callable[[str], None]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        warn(f"pacing state {path} is not JSON: ignored and rewritten")
        return {}
    clouds = raw.get("clouds") if isinstance(raw, dict) else None
    if not isinstance(clouds, dict):
        warn(f"pacing state {path} has no clouds mapping: ignored and rewritten")
        return {}
    return {name: entry for name, entry in clouds.items() if isinstance(entry, dict)}


def _write(path: Path, data: dict[str, Any]) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o640)
            json.dump({"version": 1, "clouds": data}, handle, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _state_from(raw: Any) -> PaceState:
    """The well-formed part of a stored state; anything else is the unpaced state."""
    if not isinstance(raw, dict):
        return PaceState()
    rate = _number(raw.get("rate"))
    at = _number(raw.get("at"))
    step = _number(raw.get("step"))
    throttled_at = _number(raw.get("throttled_at"))
    blocked_until = _number(raw.get("blocked_until")) or 0.0
    if rate is None or at is None or step is None or throttled_at is None or rate <= 0 or step < 0:
        return PaceState(blocked_until=blocked_until)
    return PaceState(rate=max(rate, FLOOR), at=at, step=step, throttled_at=throttled_at, blocked_until=blocked_until)


def _state_to(state: PaceState) -> dict[str, Any]:
    return {"rate": state.rate, "at": state.at, "step": state.step, "throttled_at": state.throttled_at,
            "blocked_until": state.blocked_until}


def _heartbeats(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {str(run): seen for run, value in raw.items() if (seen := _number(value)) is not None}
