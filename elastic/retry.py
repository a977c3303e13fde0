"""Retrying cloud calls that are safe to repeat, with jittered backoff that honours Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from elastic.errors import CloudError, CloudErrorKind

T = TypeVar("T")

# A 429 storm passes if we wait; a refused connection is tried once more, then the cloud is left
# for the pool's next one (a cloud that gives no reply at all is never asked twice: CloudError.final).
ATTEMPTS = {CloudErrorKind.RATE_LIMITED: 8, CloudErrorKind.TRANSIENT: 4, CloudErrorKind.UNREACHABLE: 2}


def backoff_delay(attempt: int, error: CloudError, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 0), before jitter."""
    delay = min(base * (2.0 ** attempt), cap)
    if error.retry_after is not None:
        delay = max(delay, min(max(error.retry_after, 0.0), cap))
    return delay


def spread(delay: float) -> float:
    """Up to half again as long, so threads that failed together do not retry together."""
    return delay * random.uniform(1.0, 1.5)


def with_retries(call: Callable[[], T], *, sleep: Callable[[float], None],
                 before_retry: Callable[[], T | None] | None = None,
                 on_retry: Callable[[CloudError, float], None] | None = None,
                 jitter: Callable[[float], float] = spread,
                 give_up_at: float | None = None, clock: Callable[[], float] | None = None) -> T:
    """Run `call`; on a retryable CloudError wait and try again, up to ATTEMPTS[kind] tries in all.

    `before_retry` runs before every retry and may return a result that makes the retry
    unnecessary: a create whose reply was lost has often succeeded, so look before resending.
    With `give_up_at` (and `clock`), no retry starts at or after that time: the last error is
    raised instead, so the caller reports the real cause rather than a timeout.
    """
    attempt = 0
    while True:
        try:
            return call()
        except CloudError as error:
            if not error.retryable or attempt + 1 >= ATTEMPTS.get(error.kind, 1):
                raise
            delay = jitter(backoff_delay(attempt, error))
            if give_up_at is not None and clock is not None and clock() + delay >= give_up_at:
                raise
            if on_retry:
                on_retry(error, delay)
            sleep(delay)
            attempt += 1
            if before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
