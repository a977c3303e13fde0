"""The record of every cloud request the emulator answered (or dropped), with per-endpoint counts."""

from __future__ import annotations

import collections
import threading
from typing import Any

MAX_RECORDS = 200_000  # the newest are kept; counts stay complete


class RequestLog:
    def __init__(self, max_records: int = MAX_RECORDS):
        self._lock = threading.Lock()
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_records)
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(record)
            self._counts[(record["cloud"], record["endpoint"])] += 1

    def records(self, cloud: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records if cloud is None or r["cloud"] == cloud]

    def counts(self, cloud: str | None = None) -> dict[str, int]:
        totals: collections.Counter[str] = collections.Counter()
        with self._lock:
            for (name, endpoint), count in self._counts.items():
                if cloud is None or name == cloud:
                    totals[endpoint] += count
        return dict(totals)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._counts.clear()
