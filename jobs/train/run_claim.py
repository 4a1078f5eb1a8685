"""One launcher per ``run.name`` at a time: a claim on the MLflow run that a second launcher sees.

The training run of a name is the oldest live MLflow run tagged ``ray_run_name = <name>``. A
launcher claims it by writing the ``launcher`` tag (host, pid, process start time, a launch id)
and refreshes ``launcher_heartbeat`` every ``HEARTBEAT_S`` while it runs; it clears both when the
run ends. Another launcher of the same name refuses to start while the claim is live:

- the run is RUNNING, and
- its heartbeat is younger than ``CLAIM_TTL_S``, and
- the holder is not a process of this host that has died (a crashed driver on this host is seen
  at once; one on another host once its heartbeat is ``CLAIM_TTL_S`` old).

MLflow has no compare-and-set, so a claim is verified: ``SETTLE_S`` after writing it (or creating
the run) the launcher reads again; if another run of the name is older, or another launcher's tag
replaced its own, it backs off (deleting the run it created). Two launchers racing within less
than ``SETTLE_S`` of each other's writes are told apart this way; a launcher stalled for longer
between its read and its write is not (a lock on shared storage would be needed). The settle time
need not be idle: ``acquire(confirm=False)`` writes the claim and returns, the launcher goes on
with work that starts nothing (a training driver plans its datasets and builds its trainer), and
``confirm()`` then waits only what is left of ``SETTLE_S`` before it reads. A name the launcher
generated itself (``unique_run_name``: time stamp and random suffix) has no rival to wait for: its
claim is verified at once, which spares every unnamed run the wait.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from jobs.common.redaction import redact_text
from jobs.common.tracking import filter_literal

log = logging.getLogger(__name__)

RUN_NAME_TAG = "ray_run_name"
LAUNCHER_TAG = "launcher"
HEARTBEAT_TAG = "launcher_heartbeat"
HEARTBEAT_S = 30.0
CLAIM_TTL_S = 180.0
SETTLE_S = 2.0


class RunNameTaken(RuntimeError):
    """Another launcher is training this ``run.name`` right now."""


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:  # noqa: BLE001 -- gone, or no psutil: treated as unknown
        return None


@dataclass(frozen=True)
class Launcher:
    host: str
    pid: int
    started: float | None  # the process's start time: a reused pid is another process
    launch: str

    @classmethod
    def this_process(cls) -> "Launcher":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_started(pid), uuid.uuid4().hex[:12])

    def to_tag(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started, "launch": self.launch})

    @classmethod
    def from_tag(cls, value: str | None) -> "Launcher | None":
        try:
            data = json.loads(value or "")
            return cls(str(data["host"]), int(data["pid"]), data.get("started"), str(data["launch"]))
        except (ValueError, KeyError, TypeError):
            return None

    def dead_here(self) -> bool:
        """A process of this host that no longer runs (or whose pid now names another process)."""
        if self.host != socket.gethostname():
            return False
        started = _process_started(self.pid)
        return started is None or (self.started is not None and abs(started - self.started) > 1.0)

    def describe(self) -> str:
        return f"{self.host}:{self.pid}"


def claim_state(run, me: Launcher, now: float) -> str | None:
    """Why ``run`` is held by a live launcher other than ``me`` (None when it is free to take)."""
    tags = run.data.tags
    holder = Launcher.from_tag(tags.get(LAUNCHER_TAG))
    if run.info.status != "RUNNING" or holder is None or holder.launch == me.launch:
        return None
    try:
        age = now - float(tags.get(HEARTBEAT_TAG, "0"))
    except ValueError:
        return None
    if age >= CLAIM_TTL_S or holder.dead_here():
        return None
    return (f"run.name {tags.get(RUN_NAME_TAG)!r} is being trained by launcher {holder.describe()} "
            f"(MLflow run {run.info.run_id}, last heartbeat {age:.0f} s ago); wait for it to end, or choose "
            f"another run.name. If that launcher is gone, its claim lapses {CLAIM_TTL_S - age:.0f} s from now")


class RunClaim:
    """The claim of one launcher on its run; ``start_heartbeat`` keeps it live, ``release`` ends it."""

    def __init__(self, client, experiment_id: str, name: str, settle_s: float = SETTLE_S):
        self.client, self.experiment_id, self.name = client, experiment_id, name
        self.me = Launcher.this_process()
        self.settle_s = settle_s
        self.run_id: str | None = None
        self._unconfirmed: tuple[bool, float] | None = None  # (created the run, monotonic time the claim was written)
        self._lost: RunNameTaken | None = None  # a rival won: every later confirm() says so again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _runs(self):
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.{RUN_NAME_TAG} = {filter_literal(self.name, 'run.name')}",
                                       order_by=["attributes.start_time ASC"], max_results=50)

    def _claim_tags(self) -> dict[str, str]:
        return {LAUNCHER_TAG: self.me.to_tag(), HEARTBEAT_TAG: f"{time.time():.0f}"}

    def acquire(self, tags: dict[str, str], confirm: bool = True) -> tuple[str, bool]:
        """``(run_id, resumed)``: the run of this name, claimed; a new one when there is none yet.

        Raises ``RunNameTaken`` when another live launcher holds it. ``confirm=False``: the claim is
        written and not yet verified; ``confirm()`` must follow before the run is trained.
        """
        runs = [r for r in self._runs() if r.data.tags.get(RUN_NAME_TAG) == self.name]
        if runs:
            run = runs[0]
            held = claim_state(run, self.me, time.time())
            if held:
                raise RunNameTaken(held)
            for key, value in self._claim_tags().items():
                self.client.set_tag(run.info.run_id, key, value)
            self.client.update_run(run.info.run_id, status="RUNNING")
            run_id, resumed = run.info.run_id, True
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.name,
                                         tags={**tags, RUN_NAME_TAG: self.name, **self._claim_tags()})
            run_id, resumed = run.info.run_id, False
        self.run_id = run_id
        self._unconfirmed = (not resumed, time.monotonic())
        if confirm:
            self.confirm()
        return run_id, resumed

    def confirm(self) -> None:
        """Verify the claim ``acquire`` wrote, ``settle_s`` after writing it (at once when that has passed).

        Raises ``RunNameTaken`` (having deleted the run this launcher created) when a rival won.
        """
        if self._lost is not None:
            raise self._lost
        if self._unconfirmed is None:
            return
        created, written = self._unconfirmed
        # let a concurrent launcher's create or tag land before reading
        time.sleep(max(0.0, self.settle_s - (time.monotonic() - written)))
        self._unconfirmed = None
        try:
            self._verify(self.run_id, created)
        except RunNameTaken as lost:
            self._lost = lost
            raise

    def _verify(self, run_id: str, created: bool) -> None:
        runs = [r for r in self._runs() if r.data.tags.get(RUN_NAME_TAG) == self.name]
        oldest = runs[0] if runs else None
        holder = Launcher.from_tag(oldest.data.tags.get(LAUNCHER_TAG)) if oldest else None
        if oldest is not None and oldest.info.run_id == run_id and holder is not None \
                and holder.launch == self.me.launch:
            return
        if created:
            self.client.delete_run(run_id)  # the older run (or the other launcher) wins
        other = holder.describe() if holder else "another launcher"
        raise RunNameTaken(f"run.name {self.name!r} was claimed by {other} at the same time "
                           f"(MLflow run {oldest.info.run_id if oldest else '?'}); nothing was started")

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="run-claim-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception as exc:  # noqa: BLE001 -- an outage: the claim lapses only after CLAIM_TTL_S
                log.debug("claim heartbeat not written: %s", redact_text(str(exc)))

    def stop_heartbeat(self) -> None:
        self._stop.set()


def release_tags() -> list:
    """The tags that end a claim (sent with the run's last update; an ended run is free anyway)."""
    from mlflow.entities import RunTag

    return [RunTag(LAUNCHER_TAG, ""), RunTag(HEARTBEAT_TAG, "0")]
