"""Errors with a defined outcome.

The class name of each error is what Step Functions reports as the ``Error`` of a failed task (Lambda's
``errorType``), so the API front (API Gateway mapping template or the local HTTP server) maps it to a status
code by name alone. Keep the names stable: they are part of the deployed contract.
"""

from __future__ import annotations

from typing import ClassVar


class ShardRagError(Exception):
    """Base of every error the system reports to callers."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ShardRagError):
    """The request is malformed or out of range (HTTP 400)."""

    status = 400
    code = "bad_request"


class Forbidden(ShardRagError):
    """The caller may not run this query: in multi-tenant mode, its identity carries no valid tenant (HTTP 403)."""

    status = 403
    code = "forbidden"


class ShardsUnavailable(ShardRagError):
    """No shard answered: nothing can be retrieved (HTTP 503)."""

    status = 503
    code = "shards_unavailable"


class ShardSearchFailed(ShardRagError):
    """One shard's store failed; the Parallel branch catches it and the answer is degraded."""

    status = 503
    code = "shard_search_failed"


class Overloaded(ShardRagError):
    """The service is at capacity and shed the request before answering it (HTTP 429: retry after a pause).

    Throttling and saturation end here, never in a ``degraded`` answer: nothing is down, so an incomplete answer
    would be wrong for no reason. Raised by the query workflow's shard branches (``statemachines/``) when a shard
    search was throttled or saturated, and by the local API when it is at its configured concurrency.
    """

    status = 429
    code = "too_many_requests"


class ShardBusy(Overloaded):
    """A shard is reachable but did not answer within its deadline: it is saturated, not down (a shard that
    cannot be reached raises :class:`ShardSearchFailed`). Its Parallel branch turns this into ``Overloaded``."""


class GenerationFailed(ShardRagError):
    """The generator (Bedrock, an HTTP endpoint) failed or returned an unusable answer (HTTP 502)."""

    status = 502
    code = "generation_failed"


class ConfigurationError(ShardRagError):
    """Settings are invalid; raised at cold start, never per request. Its message names secrets, paths and
    endpoints, so it is never shown to callers: the API answers a generic 500."""

    code = "configuration_error"


class WiringError(ShardRagError):
    """A payload the state machine built is malformed, or names a shard that does not exist: a deployment bug,
    not the caller's. Reported as a generic 500 (never a 400 that blames the request, never details)."""

    code = "internal_error"


#: Step Functions error name -> (HTTP status, public code), for the errors whose message is for the caller.
#: Any other name (ConfigurationError, WiringError, a crash) maps to a 500 with a generic message.
ERROR_STATUS: dict[str, tuple[int, str]] = {
    cls.__name__: (cls.status, cls.code)
    for cls in (
        BadRequest,
        Forbidden,
        ShardsUnavailable,
        ShardSearchFailed,
        Overloaded,
        ShardBusy,
        GenerationFailed,
    )
}
ERROR_STATUS["States.Timeout"] = (504, "timeout")
# Lambda's throttle (reserved concurrency exhausted), once a task's retries give up: capacity, not a fault.
ERROR_STATUS["Lambda.TooManyRequestsException"] = (Overloaded.status, Overloaded.code)
#: Seconds a shed caller is asked to wait (``Retry-After``) before trying again.
RETRY_AFTER_S = 1
