"""Rank 0's tracking inside a training worker: best-effort while it trains, nothing lost, nothing twice.

Points and tags (device tags, restart records) go into a ``MetricBuffer``; a daemon thread sends
them when the loop flushes (each epoch's end) and, while MLflow does not answer, retries with
backoff. The loop never waits for MLflow: not at start, not after a restart, not at a checkpoint.
Each checkpoint saves what MLflow has not confirmed (``save``), so a restart carries it, and the
driver replays the final checkpoint's copy when training ends. ``jobs.common.metric_buffer``
explains why every point lands exactly once.

Training has no outage limit: it goes on however long MLflow is away, and only the job's end
waits for it, at most ``tracking.outage_tolerance_s`` (``jobs.train.run_tracking``). What it costs
meanwhile is the buffer: about 50 bytes a point in memory and in each checkpoint (a 10,000-step
run logging every 10 steps carries about 0.2 MB). System metrics stop for the rest of an attempt
at the sampler's first failed call (MLflow's sampler gives up then).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from jobs.common.metric_buffer import MetricBuffer
from jobs.common.redaction import redact_text
from jobs.common.tracking import TrackingTarget, client_for
from jobs.common.tracking_retry import first_line, is_transient

log = logging.getLogger(__name__)

RETRY_MIN_S = 2.0
RETRY_MAX_S = 60.0
CLOSE_WAIT_S = 10.0  # at the end of training; what is still unsent is in the final checkpoint


class MetricLog:
    """Buffered, durable, exactly-once metric logging for one run; a no-op unless ``enabled`` (rank 0)."""

    def __init__(self, target: TrackingTarget, run_id: str, enabled: bool):
        self.run_id, self.enabled = run_id, enabled
        self.buffer = MetricBuffer()
        self._target = target
        self._wake, self._stop, self._idle = threading.Event(), threading.Event(), threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._outage_since: float | None = None
        self.sent_points = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            self.buffer.add(metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self.buffer.set_tags(tags)

    def carry(self, carried: dict[str, Any] | None) -> None:
        """What the checkpoint this worker resumed from had not had confirmed."""
        if self.enabled:
            self.buffer.merge_carried(carried)

    def record_restart(self, resumed_step: int, workers: int | None = None) -> None:
        if self.enabled:
            self.buffer.record_restart(resumed_step, workers)

    def flush(self) -> None:
        """Ask the sender to send what is pending; returns at once."""
        if not self.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_loop, name="metric-log-sender", daemon=True)
            self._thread.start()
        self._idle.clear()
        self._wake.set()

    def save(self, directory: Path) -> None:
        """Into a checkpoint being written: what MLflow has not confirmed yet."""
        if self.enabled:
            self.buffer.save(directory)

    def wait_sent(self, timeout_s: float) -> bool:
        """True once nothing is pending and no send is in flight (within ``timeout_s``)."""
        return self._idle.wait(timeout=timeout_s) and self.buffer.is_empty()

    def close(self, wait_s: float | None = None) -> None:
        """A last send, waited for at most ``wait_s`` (default ``CLOSE_WAIT_S``); the final checkpoint has
        what stays unsent."""
        if not self.enabled or self._thread is None:
            return
        wait_s = CLOSE_WAIT_S if wait_s is None else wait_s
        self.flush()
        if wait_s > 0 and not self.wait_sent(wait_s) and self.buffer.pending_points:
            log.warning("[train] %d metric points not confirmed by MLflow yet: the final checkpoint carries "
                        "them, the driver replays them", self.buffer.pending_points)
        self._stop.set()
        self._wake.set()

    def _send_loop(self) -> None:
        client = client_for(self._target)  # this thread's own client
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            self._wake.wait(timeout=None if self._outage_since is None else delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if not self.buffer.is_empty():
                    self.sent_points += self.buffer.send(client, self.run_id)
            except Exception as exc:  # noqa: BLE001 -- whatever it is, training goes on and the buffer keeps it
                self._note_failure(exc)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                if self._outage_since is not None:
                    log.warning("[train] MLflow answers again after %.0f s: buffered metrics sent",
                                time.monotonic() - self._outage_since)
                self._outage_since, delay = None, RETRY_MIN_S
            finally:
                if not self._wake.is_set():
                    self._idle.set()

    def _note_failure(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            kind = "does not answer" if is_transient(exc) else "refused the batch"
            log.warning("[train] MLflow %s (%s): training goes on; %d metric points are buffered and saved in "
                        "each checkpoint until it answers", kind, redact_text(first_line(exc)),
                        self.buffer.pending_points)
