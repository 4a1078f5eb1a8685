"""How the jobs wait for an MLflow server that does not answer: bounded, and only for outages.

MLflow's client already retries each request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, about four
minutes of backoff by default). ``OutageRetry`` adds the job's own bound on top: a call that still
fails with a transient error (connection refused, timeout, 5xx, a locked database) is tried again
with backoff until the outage, counted from its first failure, has lasted ``tolerance_s``; a
success ends the outage and the next one gets the whole tolerance again. Errors that say the
request itself is wrong (a bad parameter, a missing run, no permission) are raised at once.
A call may overrun the bound by one client retry window: the client's own retries are not cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from jobs.common.redaction import redact_text

log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow error codes of a request that will fail the same way however often it is sent.
PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                             "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE",
                             "ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED"})
MAX_BACKOFF_S = 30.0


class TrackingUnavailable(RuntimeError):
    """MLflow did not answer within the outage tolerance; ``what`` names the step that was left undone."""

    def __init__(self, what: str, seconds: float, cause: BaseException):
        self.what, self.seconds, self.cause = what, seconds, cause
        super().__init__(f"MLflow did not answer for {seconds:.0f} s while {what}: "
                         f"{redact_text(first_line(cause))}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def is_transient(exc: BaseException) -> bool:
    """An outage (worth retrying), not a request MLflow refuses on its merits."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in PERMANENT_CODES
    return isinstance(exc, OSError)  # requests' ConnectionError and Timeout are OSErrors too


class OutageRetry:
    """Retries transient MLflow failures for at most ``tolerance_s`` of one outage."""

    def __init__(self, tolerance_s: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.tolerance_s = tolerance_s
        self._sleep, self._clock = sleep, clock
        self._outage_since: float | None = None

    def call(self, what: str, fn: Callable[[], T]) -> T:
        delay = 1.0
        while True:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 -- classified just below
                if not is_transient(exc):
                    raise
                now = self._clock()
                if self._outage_since is None:
                    self._outage_since = now
                    log.warning("MLflow does not answer (%s) while %s; retrying for up to %.0f s",
                                redact_text(first_line(exc)), what, self.tolerance_s)
                waited = now - self._outage_since
                if waited >= self.tolerance_s:
                    raise TrackingUnavailable(what, waited, exc) from exc
                self._sleep(min(delay, self.tolerance_s - waited))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if self._outage_since is not None:
                log.warning("MLflow answers again after %.0f s", self._clock() - self._outage_since)
                self._outage_since = None
            return result
