"""Retrying cloud calls that are safe to repeat, with backoff that honours Retry-After."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from elastic.errors import CloudError

T = TypeVar("T")


def backoff_delay(attempt: int, error: CloudError, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 0)."""
    if error.retry_after is not None:
        return min(max(error.retry_after, 0.0), cap)
    return min(base * (2 ** attempt), cap)


def with_retries(call: Callable[[], T], *, sleep: Callable[[float], None], attempts: int = 4,
                 before_retry: Callable[[], T | None] | None = None,
                 on_retry: Callable[[CloudError, float], None] | None = None) -> T:
    """Run `call`; on a retryable CloudError wait and try again, at most `attempts` times in all.

    `before_retry` runs before every retry and may return a result that makes the retry
    unnecessary: a create whose reply was lost has often succeeded, so look before resending.
    """
    for attempt in range(attempts):
        try:
            return call()
        except CloudError as error:
            if not error.retryable or attempt == attempts - 1:
                raise
            delay = backoff_delay(attempt, error)
            if on_retry:
                on_retry(error, delay)
            sleep(delay)
            if before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
    raise AssertionError("unreachable")  # the loop either returns or raises
