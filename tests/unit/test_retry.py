"""Retry policy: which errors are retried, how often, how long to wait, and look-before-resend."""

from __future__ import annotations

import pytest

from elastic.errors import CloudError, CloudErrorKind
from elastic.retry import ATTEMPTS, backoff_delay, with_retries


def _failing(kind: CloudErrorKind, times: int, result="ok", retry_after=None):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise CloudError(kind, "x", retry_after=retry_after)
        return result

    return call, calls


@pytest.mark.parametrize("kind", [CloudErrorKind.RATE_LIMITED, CloudErrorKind.TRANSIENT])
def test_retryable_kinds_get_their_attempts_then_raise(kind):
    """A retryable error is tried ATTEMPTS[kind] times in all, then raised."""
    call, calls = _failing(kind, times=100)
    with pytest.raises(CloudError):
        with_retries(call, sleep=lambda s: None, jitter=lambda d: d)
    assert len(calls) == ATTEMPTS[kind]


@pytest.mark.parametrize("kind", [CloudErrorKind.QUOTA, CloudErrorKind.NOT_FOUND, CloudErrorKind.AUTH])
def test_other_kinds_are_not_retried(kind):
    """Quota, not-found and auth errors are raised at once."""
    call, calls = _failing(kind, times=1)
    with pytest.raises(CloudError):
        with_retries(call, sleep=lambda s: None)
    assert len(calls) == 1


def test_retry_after_is_honoured_and_backoff_doubles():
    """Backoff doubles from 1 s up to a cap, and never waits less than Retry-After."""
    error = CloudError(CloudErrorKind.RATE_LIMITED, "x")
    assert [backoff_delay(n, error) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(0, CloudError(CloudErrorKind.RATE_LIMITED, "x", retry_after=7)) == 7


def test_look_before_resend_returns_what_it_found():
    """When the look before a retry finds the result, the call is not sent again."""
    call, calls = _failing(CloudErrorKind.TRANSIENT, times=1)
    assert with_retries(call, sleep=lambda s: None, before_retry=lambda: "found") == "found"
    assert len(calls) == 1
