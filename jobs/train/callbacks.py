"""Hooks around the training loop that tests and audits use; none of them runs unless asked for.

``StepDelay`` slows each optimiser step so that a fault-injection test's SIGKILL lands mid-epoch
on a seconds-long tiny run (until the test's end file exists: ``jobs.common.injected_delay``).
``DieAfterSend`` ends rank 0's process once an epoch's metrics have reached MLflow and before that
epoch's checkpoint exists (the window where a restart used to log an epoch twice), once per listed epoch.
``ShardAudit`` writes the row ids each rank trained on per epoch and the final parameter digest
(determinism and sharding tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from jobs.common.injected_delay import DELAY_END_ENV, InjectedDelay
from jobs.train.distributed import unwrap

STEP_DELAY_ENV = "TEXT_JOBS_TEST_STEP_DELAY_S"
DIE_AFTER_SEND_ENV = "TEXT_JOBS_TEST_DIE_AFTER_SEND"  # "<marker dir>:<epoch>,<epoch>..."
FAULT_ENVS = (STEP_DELAY_ENV, DELAY_END_ENV, DIE_AFTER_SEND_ENV)  # shipped to workers (driver.worker_env)


class LoopCallback:
    def wrap_batches(self, epoch: int, batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        return batches

    def after_step(self, step: int) -> None: ...

    def after_epoch(self, epoch: int) -> None: ...

    def after_flush(self, epoch: int, metrics_log) -> None: ...

    def after_training(self, model: torch.nn.Module, step: int) -> None: ...


class Callbacks(LoopCallback):
    """Several callbacks as one."""

    def __init__(self, callbacks: list[LoopCallback]):
        self.callbacks = callbacks

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def wrap_batches(self, epoch, batches):
        for callback in self.callbacks:
            batches = callback.wrap_batches(epoch, batches)
        return batches

    def after_step(self, step):
        for callback in self.callbacks:
            callback.after_step(step)

    def after_epoch(self, epoch):
        for callback in self.callbacks:
            callback.after_epoch(epoch)

    def after_flush(self, epoch, metrics_log):
        for callback in self.callbacks:
            callback.after_flush(epoch, metrics_log)

    def after_training(self, model, step):
        for callback in self.callbacks:
            callback.after_training(model, step)


class StepDelay(LoopCallback):
    def __init__(self, delay: InjectedDelay):
        self.delay = delay

    def after_step(self, step: int) -> None:
        self.delay.sleep()


class DieAfterSend(LoopCallback):
    """Exit rank 0's process (as a crash would) once ``epoch``'s metrics are in MLflow, before its checkpoint.

    After epoch 0 it first waits ``RECORDED_S``: Ray Train records a reported checkpoint a moment after
    the report, and a death before that would restart from the one before, not the one just written.
    """

    RECORDED_S = 5.0

    def __init__(self, marker_dir: str, epochs: set[int]):
        self.marker_dir, self.epochs = Path(marker_dir), epochs

    @classmethod
    def from_env(cls, value: str) -> "DieAfterSend":
        marker_dir, _, epochs = value.rpartition(":")
        return cls(marker_dir, {int(e) for e in epochs.split(",") if e})

    def after_flush(self, epoch: int, metrics_log) -> None:
        marker = self.marker_dir / f"died-after-send-epoch{epoch}"
        if epoch not in self.epochs or marker.exists():
            return  # each listed epoch kills one attempt only: the restarted one goes on
        if not metrics_log.wait_sent(120):
            raise RuntimeError(f"epoch {epoch}'s metrics did not reach MLflow: the fault needs them sent")
        if epoch > 0:
            time.sleep(self.RECORDED_S)
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        os._exit(1)


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ShardAudit(LoopCallback):
    def __init__(self, directory: str, rank: int):
        self.directory = Path(directory)
        self.rank = rank
        self.seen_ids: list[str] = []

    def wrap_batches(self, epoch: int, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.seen_ids = []
        for batch in batches:
            self.seen_ids.extend(batch.get("ids", ()))
            yield batch

    def _write(self, name: str, payload: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{name}-rank{self.rank}.json").write_text(json.dumps(payload))

    def after_epoch(self, epoch: int) -> None:
        self._write(f"epoch{epoch}", {"ids": self.seen_ids})

    def after_training(self, model: torch.nn.Module, step: int) -> None:
        self._write("final", {"parameter_digest": parameter_digest(model), "step": step})


def callbacks_for(rank: int, audit_dir: str | None) -> Callbacks:
    """The callbacks a run asked for: the step delay from its environment, the audit from its config."""
    callbacks: list[LoopCallback] = []
    delay = InjectedDelay.from_env(STEP_DELAY_ENV)
    if delay is not None:
        callbacks.append(StepDelay(delay))
    if os.environ.get(DIE_AFTER_SEND_ENV) and rank == 0:
        callbacks.append(DieAfterSend.from_env(os.environ[DIE_AFTER_SEND_ENV]))
    if audit_dir is not None:
        callbacks.append(ShardAudit(audit_dir, rank))
    return Callbacks(callbacks)
