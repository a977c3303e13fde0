"""Injected faults of one cloud: what they are (Faults) and the per-request verdict (FaultGate)."""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

OUTAGES = ("reset", "timeout", "blackhole")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
HOLDING = ("timeout", "blackhole")  # outages that hold a request unanswered


@dataclass(frozen=True)
class Faults:
    latency_seconds: float = 0.0
    error_rate: float = 0.0  # fraction of requests answered with one of error_statuses
    error_statuses: tuple[int, ...] = (500, 503)
    seed: int = 0
    rate_limit_per_second: int | None = None  # admitted requests per second; beyond: 429
    no_valid_host_flavors: tuple[str, ...] = ()
    no_valid_host_fraction: float = 0.0
    stuck_in_build: bool = False
    outage: str | None = None  # "reset" | "timeout" | "blackhole" | None
    outage_timeout_seconds: float = 30.0
    # Nova's network info cache behind Neutron: True hides floating IPs from Nova's server views;
    # a number N shows each only N seconds after its association (a cache heal).
    floating_ip_cache_lag: bool | float = False
    # Credentials expired: Keystone refuses every authentication (401) and no token is valid; the
    # tokens held when it was set stay revoked after it is cleared.
    auth_fails: bool = False
    quota_status: int = 403  # 413: Nova's quota refusals the pre-Juno way (overLimit, Retry-After: 0)
    # That fraction of requests (of reply_lost_methods; () is every method) is processed in full (a
    # create creates, a delete deletes) and then the connection is reset instead of answered: a
    # reply lost by a proxy or the network, the way clouds get duplicate servers behind client retries.
    reply_lost_rate: float = 0.0
    reply_lost_methods: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "faults") -> Faults:
        return cls().merged(values, where=where)

    def merged(self, values: dict[str, Any], *, where: str = "faults") -> Faults:
        """A copy with `values` merged in, each checked; raises ValueError naming the key."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: must be a mapping")
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{where}: unknown fault(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        changes = {key: _check(key, value, f"{where}.{key}") for key, value in values.items()}
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _check(key: str, value: Any, where: str) -> Any:
    def number(low: float, high: float = math.inf) -> float:
        if value is None:
            return Faults.__dataclass_fields__[key].default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{where}: {value!r} must be a number in [{low}, {high}]")
        return float(value)

    if key in ("latency_seconds", "outage_timeout_seconds"):
        return number(0)
    if key in ("error_rate", "no_valid_host_fraction", "reply_lost_rate"):
        return number(0, 1)
    if key == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {value!r} must be an integer")
        return value
    if key == "rate_limit_per_second":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {value!r} must be an integer >= 1, or null for no limit")
        return value
    if key == "error_statuses":
        statuses = isinstance(value, (list, tuple)) and all(isinstance(s, int) and 400 <= s <= 599 for s in value)
        if not value or not statuses:
            raise ValueError(f"{where}: {value!r} must be a non-empty list of HTTP error statuses")
        return tuple(value)
    if key == "reply_lost_methods":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) and m.upper() in METHODS for m in value):
            raise ValueError(f"{where}: {value!r} must be a list of HTTP methods ({', '.join(METHODS)}); empty for all")
        return tuple(dict.fromkeys(m.upper() for m in value))
    if key == "no_valid_host_flavors":
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            raise ValueError(f"{where}: {value!r} must be a list of flavor names")
        return tuple(value)
    if key in ("stuck_in_build", "auth_fails"):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} must be true or false")
        return value
    if key == "floating_ip_cache_lag":
        if isinstance(value, bool):
            return value
        if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{where}: {value!r} must be true, false, or a number of seconds >= 0")
        return float(value)
    if key == "quota_status":
        if value not in (403, 413) or isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} must be 403 (Juno and later) or 413 (before Juno)")
        return value
    if key == "outage":
        if value not in (None, *OUTAGES):
            raise ValueError(f"{where}: {value!r} must be one of reset, timeout, blackhole, or null")
        return value
    raise AssertionError(key)


@dataclass(frozen=True)
class Verdict:
    """What to do with one request: drop the connection (after `delay`), or answer `status` (None:
    serve it normally) after `delay` seconds; `lose_reply`: serve it, then reset the connection
    instead of sending the reply."""

    drop: bool = False
    delay: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    lose_reply: bool = False


class FaultGate:
    def __init__(self, faults: Faults):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # held requests wait on it
        self._released = False  # set by release(): the lab is stopping
        self._faults = faults
        self._random = random.Random(faults.seed)
        self._admitted: collections.deque[float] = collections.deque()

    @property
    def faults(self) -> Faults:
        return self._faults

    def replace(self, faults: Faults) -> None:
        with self._lock:
            if faults.seed != self._faults.seed or faults == Faults():
                self._random = random.Random(faults.seed)
            self._faults = faults
            self._admitted.clear()
            self._changed.notify_all()

    def admit(self, now: float, method: str = "GET") -> Verdict:
        with self._lock:
            faults = self._faults
            if faults.outage == "reset":
                return Verdict(drop=True)
            if faults.outage == "timeout":
                return Verdict(drop=True, delay=faults.outage_timeout_seconds)
            if faults.outage == "blackhole":
                return Verdict(drop=True, delay=math.inf)
            if faults.rate_limit_per_second is not None:
                while self._admitted and self._admitted[0] <= now - 1.0:
                    self._admitted.popleft()
                if len(self._admitted) >= faults.rate_limit_per_second:
                    wait = self._admitted[0] + 1.0 - now
                    return Verdict(status=429, retry_after=max(1, math.ceil(wait)))
                self._admitted.append(now)
            if faults.error_rate and self._random.random() < faults.error_rate:
                return Verdict(delay=faults.latency_seconds, status=self._random.choice(faults.error_statuses))
            lost_method = not faults.reply_lost_methods or method.upper() in faults.reply_lost_methods
            if (faults.reply_lost_rate and lost_method
                    and self._random.random() < faults.reply_lost_rate):
                return Verdict(delay=faults.latency_seconds, lose_reply=True)
            return Verdict(delay=faults.latency_seconds)

    def hold(self, delay: float) -> None:
        """Hold a request of a timeout or blackhole outage unanswered: until `delay` passed, the
        outage was lifted or changed, or release() was called, whichever comes first."""
        if delay <= 0:
            return
        deadline = time.monotonic() + delay
        with self._changed:
            outage = self._faults.outage
            while not self._released and self._faults.outage == outage:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(None if math.isinf(remaining) else remaining)

    def release(self) -> None:
        """Let every held request go, now and from now on (the lab is stopping)."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def boot_fails(self, flavor_name: str) -> bool:
        """No valid host for this boot: the flavor is listed, or the dice say so."""
        with self._lock:
            faults = self._faults
            if flavor_name in faults.no_valid_host_flavors:
                return True
            return bool(faults.no_valid_host_fraction) and self._random.random() < faults.no_valid_host_fraction
