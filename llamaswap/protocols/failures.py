"""
One way to put a network failure into words for a log line or an error
answer: "connection refused", "timed out", or the error's own message.
"""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.python.failure import Failure


def describe_failure(failure: Failure | BaseException | None) -> str:
    if failure is None:
        return "unknown error"
    value = failure.value if isinstance(failure, Failure) else failure
    # Agent's ResponseNeverReceived and friends wrap the real reasons.
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(describe_failure(reason) for reason in reasons)
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, (defer.TimeoutError, error.TimeoutError)):
        return "timed out"
    return str(value).strip() or type(value).__name__
