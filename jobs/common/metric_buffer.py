"""A run's metrics and tags not yet confirmed by MLflow: durable, and sent exactly once.

Rank 0 of a training run adds its points here; a copy is saved in each checkpoint
(``to_json``), so a restart from that checkpoint carries whatever MLflow has not confirmed,
and the driver or ``jobs.register_checkpoint`` replays the final checkpoint's copy at the end.

Exactly once, whatever restarts and outages happened, rests on two facts:

- per metric key, MLflow holds a prefix of the run's points in step order: points are sent in
  the order they were added and only a sent prefix is ever dropped from the buffer;
- a resend of an identical point (key, value, timestamp, step) is a no-op in MLflow's SQL store.

So before its first send a process reconciles: it reads each key's highest step in the run and
drops what it holds at or below it. That removes what an earlier attempt sent after the
checkpoint this one resumed from (the epoch re-run after a restart, with or without a
checkpoint, end-of-epoch metrics off the ``log_every_steps`` grid included) and what the
checkpoint carried but was sent after it was written. A send whose reply was lost is resent
as is and deduplicated by the store. A second point of one key at one step is dropped on arrival.

Restarts are recorded as events with an id and resolved against the run's tags at send time
(``restarts``, ``resumed_from_steps``, ``restart_ids``), so a restart is counted once even when
no MLflow call was possible while it happened.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

TRACKING_FILE = "tracking_pending.json"  # beside the state in each checkpoint
FORMAT_VERSION = 1
MAX_METRICS_PER_REQUEST = 900  # MLflow allows 1000 entities per log_batch, tags included
RESTART_TAGS = ("restarts", "resumed_from_steps", "resumed_with_workers", "restart_ids")


def latest_steps(client, run) -> dict[str, int]:
    """Each metric key's highest step in the run (MLflow's latest metric is the one of the highest step)."""
    objects = getattr(run.data, "_metric_objs", None)
    if objects is not None:
        return {m.key: int(m.step) for m in objects}
    return {key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=-1)
            for key in run.data.metrics}


class MetricBuffer:
    """Points, tags and restart events of one run waiting for MLflow; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one send at a time: it alone drops points
        self._points: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step), in order
        self._tags: dict[str, str] = {}
        self._restarts: list[dict[str, Any]] = []  # {"id": ..., "step": ...} not yet in the run's tags
        self._floor: dict[str, int] = {}  # per key, the highest step held, sent or known to be in MLflow
        self._reconciled = False  # checked against the run's history since this process started

    # ------------------------------------------------------------ adding

    def add(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        with self._lock:
            for key, value in metrics.items():
                if step <= self._floor.get(key, -1):
                    continue  # logged at this step already (or sent by an earlier attempt)
                self._points.append((key, float(value), now, int(step)))
                self._floor[key] = int(step)

    def set_tags(self, tags: dict[str, str]) -> None:
        with self._lock:
            self._tags.update({key: str(value) for key, value in tags.items()})

    def record_restart(self, resumed_step: int, workers: int | None = None) -> None:
        """A restarted group resumed at ``resumed_step`` with ``workers`` workers (elastic: it may differ)."""
        with self._lock:
            self._restarts.append({"id": uuid.uuid4().hex[:8], "step": int(resumed_step), "workers": workers})

    # ------------------------------------------------------------ durability

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"version": FORMAT_VERSION, "points": [list(p) for p in self._points], "tags": dict(self._tags),
                    "restarts": [dict(r) for r in self._restarts]}

    def merge_carried(self, carried: dict[str, Any] | None) -> None:
        """Take over what a checkpoint carried: it is older than anything added since, so it goes first."""
        if not carried:
            return
        if carried.get("version") != FORMAT_VERSION:
            raise ValueError(f"{TRACKING_FILE}: unknown format version {carried.get('version')!r}")
        points = [(str(k), float(v), int(t), int(s)) for k, v, t, s in carried.get("points", [])]
        with self._lock:
            self._points = points + self._points
            for key, _, _, step in points:
                self._floor[key] = max(self._floor.get(key, -1), step)
            self._tags = {**{k: str(v) for k, v in carried.get("tags", {}).items()}, **self._tags}
            known = {r["id"] for r in self._restarts}
            self._restarts = [r for r in carried.get("restarts", []) if r["id"] not in known] + self._restarts

    def save(self, directory: Path) -> None:
        (directory / TRACKING_FILE).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, directory: Path) -> "MetricBuffer":
        """The buffer a checkpoint directory carries (empty when it has none: a checkpoint from before)."""
        buffer = cls()
        path = directory / TRACKING_FILE
        if path.is_file():
            buffer.merge_carried(json.loads(path.read_text()))
        return buffer

    # ------------------------------------------------------------ state

    @property
    def pending_points(self) -> int:
        with self._lock:
            return len(self._points)

    def is_empty(self) -> bool:
        with self._lock:
            return not (self._points or self._tags or self._restarts)

    # ------------------------------------------------------------ sending

    def send(self, client, run_id: str) -> int:
        """Send everything pending (reconciling first, once per process); returns the points sent.

        Raises what the client raises; what was not confirmed stays pending, in order.
        """
        from mlflow.entities import Metric, RunTag

        with self._sending:
            with self._lock:
                needs_run = not self._reconciled or bool(self._restarts)
            if needs_run:
                run = client.get_run(run_id)
                steps = latest_steps(client, run) if not self._reconciled else {}
                with self._lock:
                    if not self._reconciled:
                        self._drop_logged(steps)
                        self._reconciled = True
                    self._resolve_restarts(run.data.tags)
            with self._lock:
                points, tags = list(self._points), dict(self._tags)
            sent = 0
            for start in range(0, max(len(points), 1), MAX_METRICS_PER_REQUEST):
                chunk = points[start:start + MAX_METRICS_PER_REQUEST]
                chunk_tags = tags if start == 0 else {}
                if not chunk and not chunk_tags:
                    break
                client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk],
                                 tags=[RunTag(k, v) for k, v in chunk_tags.items()])
                with self._lock:
                    del self._points[:len(chunk)]  # the prefix just confirmed: add() only appends
                    for key, value in chunk_tags.items():
                        if self._tags.get(key) == value:
                            del self._tags[key]
                sent += len(chunk)
            return sent

    def _drop_logged(self, steps: dict[str, int]) -> None:
        self._points = [p for p in self._points if p[3] > steps.get(p[0], -1)]
        for key, step in steps.items():
            self._floor[key] = max(self._floor.get(key, -1), step)

    def _resolve_restarts(self, run_tags: dict[str, str]) -> None:
        """Fold restart events into absolute tag values (a resend then repeats the same values)."""
        if not self._restarts:
            return
        current = {**run_tags, **self._tags}  # what is pending is newer than what the run shows
        ids = [i for i in current.get("restart_ids", "").split(",") if i]
        steps = [s for s in current.get("resumed_from_steps", "").split(",") if s]
        workers = [w for w in current.get("resumed_with_workers", "").split(",") if w]
        added = 0
        for event in self._restarts:
            if event["id"] not in ids:
                ids.append(event["id"])
                steps.append(str(event["step"]))
                workers.append(str(event.get("workers") or "?"))  # "?": an event carried from before it was kept
                added += 1
        restarts = int(current.get("restarts", "0") or 0) + added
        self._tags.update({"restarts": str(restarts), "resumed_from_steps": ",".join(steps),
                           "resumed_with_workers": ",".join(workers), "restart_ids": ",".join(ids)})
        self._restarts = []
