"""The per-worker training loop that drives a ``TrainingTask`` (Ray Train's ``train_loop_per_worker``).

Device and process group come from Ray Train; this module owns the rest of a worker's life:
resume from the latest complete checkpoint, epochs of optimiser steps over groups of
micro-batches (gradient accumulation, clipping, mixed precision), periodic loss logging,
distributed evaluation, early stopping, and a checkpoint reported through ``ray.train.report``
at each epoch's end. Rank 0 alone logs to MLflow, through ``jobs.train.metric_log``: the loop
never waits for MLflow, and each checkpoint carries the metrics MLflow has not confirmed yet.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.common.precision import autocast_for
from jobs.common.tracking import TrackingTarget
from jobs.train.callbacks import callbacks_for, parameter_digest
from jobs.train.checkpoint import (Progress, checkpoint_dir_name, complete_persisted, load_latest_valid_state,
                                   restore, save_checkpoint)
from jobs.train.distributed import (all_reduce_sum, compile_in_place, epoch_seed, gather_objects, seed_everything,
                                   unwrap)
from jobs.train.metric_log import MetricLog
from jobs.train.optimizer import build_optimizer, total_optimizer_steps
from jobs.train.settings import OptimSettings, ScalingSettings
from jobs.train.task import TrainingTask

log = logging.getLogger(__name__)  # Ray Train forwards worker logs to the driver once


@dataclass(frozen=True)
class LoopContext:
    """What the driver resolved for the workers: absolute paths and the MLflow run."""
    tracking: TrackingTarget
    mlflow_run_id: str
    micro_batches_per_epoch: int  # per worker
    checkpoint_metric: str = "val_loss"
    checkpoint_mode: str = "min"
    audit_dir: str | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """The one argument of the worker loop: the task, its settings and the driver's context."""
    task: TrainingTask
    optim: OptimSettings
    scaling: ScalingSettings
    context: LoopContext
    config_dict: dict[str, Any]  # the job's whole config, saved beside each checkpoint


@dataclass(frozen=True)
class StepResult:
    loss_sum: torch.Tensor  # sum of the micro-batches' mean losses (on the device)
    micro_batches: int
    samples: int | torch.Tensor
    tokens: int | torch.Tensor


def micro_batch_groups(batches: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive groups of ``size`` micro-batches; the last group holds what is left."""
    group: list[dict[str, Any]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def optimizer_step(model: torch.nn.Module, task: TrainingTask, group: list[dict[str, Any]], optimizer, scheduler,
                   scaler, optim: OptimSettings, device: torch.device) -> StepResult:
    """One optimiser step on the mean of the group's micro-batch losses, whatever the group's size."""
    loss_sum = torch.zeros((), device=device)
    samples: int | torch.Tensor = 0
    tokens: int | torch.Tensor = 0
    for index, batch in enumerate(group):
        # DDP all-reduces gradients in the backward of the group's last micro-batch only; it reads
        # the no_sync flag in forward, so both passes run inside it.
        last = index == len(group) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with autocast_for(optim.precision, device):
                loss, n_samples, n_tokens = task.train_loss(model, batch)
            scaled = loss / len(group)
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += loss.detach().float()
        samples, tokens = samples + n_samples, tokens + n_tokens
    if scaler:
        scaler.unscale_(optimizer)
    if optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return StepResult(loss_sum, len(group), samples, tokens)


class Counters:
    """Training sums since a point in time, kept on the device: no host sync per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = time.perf_counter()
        self.sums = {key: torch.zeros((), device=device) for key in ("loss", "micro", "samples", "tokens")}

    def add(self, result: StepResult) -> None:
        self.sums["loss"] += result.loss_sum
        self.sums["micro"] += result.micro_batches
        self.sums["samples"] += result.samples
        self.sums["tokens"] += result.tokens

    def totals(self) -> tuple[dict[str, float], float]:
        """Sums over all workers (a collective: every rank calls it at the same step) and seconds elapsed."""
        totals = all_reduce_sum(self.sums, self.device)
        return {key: float(value) for key, value in totals.items()}, time.perf_counter() - self.start


def evaluate(task: TrainingTask, model: torch.nn.Module, split: str, device: torch.device,
             precision: str) -> dict[str, float]:
    # The unwrapped module: DDP's forward broadcasts buffers, a collective that would deadlock
    # when evaluation shards (unequal on purpose, nothing dropped) give ranks different batch counts.
    model = unwrap(model)
    model.eval()
    sums = {key: value.double() for key, value in task.zero_eval_sums().items()}
    with torch.inference_mode(), autocast_for(precision, device):
        for batch in task.batches(split, epoch=0, seed=0, shuffle=False):
            for key, value in task.eval_sums(model, batch).items():
                sums[key] = sums[key] + value.double().cpu()
    model.train()
    return {f"{split}_{k}": v for k, v in task.eval_metrics(all_reduce_sum(sums, device)).items()}


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def accumulation_for(grad_accum_steps: int, planned_workers: int, workers: int) -> int:
    """Micro-batches per optimiser step for a group of ``workers`` (elastic: fewer than planned).

    Fewer workers each read more rows: accumulating ``planned / workers`` times as many micro-batches
    keeps the global batch, the steps per epoch and so the learning-rate schedule of the planned group.
    """
    if workers >= planned_workers:
        return grad_accum_steps
    factor = planned_workers / workers
    if factor != int(factor):
        log.warning("[train] %d of %d planned workers: the global batch is kept only approximately",
                    workers, planned_workers)
    return max(1, round(grad_accum_steps * factor))


def worker_placement() -> dict[str, Any]:
    """Where this worker runs: its ranks and its node (id and address)."""
    import ray
    import ray.train

    context = ray.train.get_context()
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None  # None: in-process loop
    return {"rank": context.get_world_rank(), "local_rank": context.get_local_rank(),
            "node_rank": context.get_node_rank(), "node_id": node_id, "node_ip": ray.util.get_node_ip_address()}


def placement_tags(placements: list[dict[str, Any]], from_step: int) -> dict[str, str]:
    """The run's record of which node each rank trained on (this attempt's, and kept per attempt)."""
    import json

    text = json.dumps(placements, sort_keys=True)
    return {"train_nodes": text, f"train_nodes_from_step_{from_step}": text,
            "train_node_count": str(len({p["node_id"] for p in placements}))}


def device_tags(device: torch.device, optim: OptimSettings, world_size: int) -> dict[str, str]:
    """Where the workers trained, as the run's tags: the device really used, not the one configured."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"train_device": device.type, "train_device_name": name, "train_precision": optim.precision,
            "train_compile": str(optim.compile).lower(), "train_world_size": str(world_size),
            **({"train_compile_backend": optim.compile_backend} if optim.compile else {})}


class TrainingWorker:
    """One Ray Train worker's model, optimiser and progress, and the steps of its loop."""

    def __init__(self, spec: WorkerSpec):
        import ray.train
        import ray.train.torch

        self.spec, self.task, self.optim, self.ctx = spec, spec.task, spec.optim, spec.context
        self.rank = ray.train.get_context().get_world_rank()
        torch.set_num_threads(spec.scaling.torch_threads)
        self.device = ray.train.torch.get_device()
        seed_everything(self.optim.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        if self.optim.compile:
            model = compile_in_place(model, self.optim.compile_backend)
        self.model = ray.train.torch.prepare_model(model)
        self.total_steps = total_optimizer_steps(self.optim, self.ctx.micro_batches_per_epoch)
        self.accumulation = accumulation_for(self.optim.grad_accum_steps, spec.scaling.world_size,
                                             ray.train.get_context().get_world_size())
        self.optimizer, self.scheduler = build_optimizer(self.model, self.optim, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.optim.precision == "fp16" else None
        self.metrics_log = MetricLog(self.ctx.tracking, self.ctx.mlflow_run_id, enabled=self.rank == 0)
        self.callbacks = callbacks_for(self.rank, self.ctx.audit_dir)
        self.progress = Progress()
        # buffered like the metrics: a (re)started worker trains whether or not MLflow answers
        self.metrics_log.set_tags(device_tags(self.device, self.optim, ray.train.get_context().get_world_size()))

    def run(self) -> None:
        finished = False
        try:
            self.resume()
            self.metrics_log.set_tags(placement_tags(gather_objects(worker_placement()), self.progress.step))
            # sent now, not at the first epoch's end: a group resized or lost before its first checkpoint is
            # recorded still has its restart counted (nothing else would carry the event)
            self.metrics_log.flush()
            self.model.train()
            for epoch in range(self.progress.next_epoch, self.optim.epochs):
                counts = self.train_epoch(epoch)
                if self.end_epoch(epoch, counts):
                    break
            self.callbacks.after_training(self.model, self.progress.step)
            self.check_replicas()
            finished = True
        finally:
            # a failed attempt does not wait: what it had not sent is in its last checkpoint or is re-run
            self.metrics_log.close(wait_s=None if finished else 0)

    def resume(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        state = load_latest_valid_state(checkpoint, self.device) if checkpoint is not None else None
        if state is None:
            return
        self.progress = restore(state, self.model, self.optimizer, self.scheduler, self.scaler)
        self.metrics_log.carry(state.get("tracking"))
        self.metrics_log.record_restart(self.progress.step, ray.train.get_context().get_world_size())
        if self.rank == 0:
            log.info("[train] resumed from checkpoint at epoch %d, step %d", state["epoch"], self.progress.step)

    def check_replicas(self) -> None:
        """DDP keeps every replica equal; say so in the run (``replicas_equal``), and loudly if they are not."""
        digests = gather_objects(parameter_digest(self.model))
        equal = len(set(digests)) == 1
        self.metrics_log.set_tags({"replicas_equal": str(equal).lower(), "replica_digest": digests[0][:16]})
        if not equal and self.rank == 0:
            log.error("[train] the replicas' parameters differ after training: %s", [d[:16] for d in digests])

    def out_of_steps(self) -> bool:
        return bool(self.optim.max_steps and self.progress.step >= self.optim.max_steps)

    def train_epoch(self, epoch: int) -> Counters:
        torch.manual_seed(epoch_seed(self.optim.seed, self.rank, epoch))
        self.optimizer.zero_grad(set_to_none=True)
        epoch_counts, window = Counters(self.device), Counters(self.device)
        batches = self.callbacks.wrap_batches(epoch, self.task.batches("train", epoch=epoch, seed=self.optim.seed,
                                                                      shuffle=True))
        for group in micro_batch_groups(batches, self.accumulation):
            result = optimizer_step(self.model, self.task, group, self.optimizer, self.scheduler, self.scaler,
                                    self.optim, self.device)
            self.progress.step += 1
            epoch_counts.add(result)
            window.add(result)
            if self.callbacks:
                self.callbacks.after_step(self.progress.step)
            if self.progress.step % self.optim.log_every_steps == 0:
                self.log_window(epoch, window)
                window = Counters(self.device)
            if self.out_of_steps():
                break
        return epoch_counts

    def log_window(self, epoch: int, window: Counters) -> None:
        totals, seconds = window.totals()
        train_loss = totals["loss"] / max(totals["micro"], 1.0)
        lr = self.scheduler.get_last_lr()[0]
        self.metrics_log.log({"train_loss": train_loss, "learning_rate": lr, "epoch": epoch}, self.progress.step)
        if self.rank == 0:
            log.info("[train] epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s", epoch, self.progress.step,
                     self.total_steps, train_loss, lr, totals["samples"] / seconds)

    def end_epoch(self, epoch: int, counts: Counters) -> bool:
        """Evaluate, decide on early stopping, log and checkpoint; True when training is finished."""
        totals, seconds = counts.totals()
        metrics = {"epoch": epoch, "step": self.progress.step, "train_samples_per_s": totals["samples"] / seconds,
                   "train_tokens_per_s": totals["tokens"] / seconds, "epoch_seconds": seconds}
        metrics.update(evaluate(self.task, self.model, "val", self.device, self.optim.precision))
        early_stop = self.update_best(metrics[self.ctx.checkpoint_metric])
        finished = epoch == self.optim.epochs - 1 or early_stop or self.out_of_steps()
        if finished:
            metrics.update(evaluate(self.task, self.model, "test", self.device, self.optim.precision))
        self.callbacks.after_epoch(epoch)
        self.metrics_log.log(metrics, self.progress.step)
        self.metrics_log.flush()  # sent in the background; the checkpoint below carries it until confirmed
        self.callbacks.after_flush(epoch, self.metrics_log)
        self.report_checkpoint(epoch, metrics)
        if self.rank == 0:
            shown = {f"{split}_{name}" for split in ("val", "test") for name in self.task.headline_metrics}
            headline = {k: round(v, 4) for k, v in metrics.items() if k in shown}
            log.info("[train] epoch %d step %d: %s (%.0fs)", epoch, self.progress.step, headline, seconds)
        return finished

    def update_best(self, monitored: float) -> bool:
        """Track the checkpoint metric; True when early stopping's patience has run out.

        Metrics are all-reduced, so every rank takes the same decision.
        """
        progress = self.progress
        if _improved(monitored, progress.best, self.ctx.checkpoint_mode):
            progress.best, progress.stale_epochs = monitored, 0
        else:
            progress.stale_epochs += 1
        patience = self.optim.early_stopping_patience
        early_stop = patience is not None and progress.stale_epochs >= patience
        if early_stop and self.rank == 0:
            log.info("[train] early stopping: %s did not improve for %d epochs", self.ctx.checkpoint_metric,
                     progress.stale_epochs)
        return early_stop

    def report_checkpoint(self, epoch: int, metrics: dict[str, float]) -> None:
        """``ray.train.report`` is a barrier every rank calls; rank 0 alone writes the checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                self.metrics_log.save(Path(tmp))  # before the state: COMPLETE, written last, covers it
                save_checkpoint(Path(tmp), self.model, self.optimizer, self.scheduler, self.scaler, self.progress,
                                epoch, self.spec.config_dict, self.task.export)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            name = checkpoint_dir_name(epoch, self.progress.step)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
            if self.rank == 0:  # Ray's upload ignores a failed close: what it left is checked, and completed
                storage = ray.train.get_context().get_storage()
                complete_persisted(Path(tmp), storage.storage_filesystem,
                                   storage.build_checkpoint_path_from_name(name))


def train_worker(spec: WorkerSpec) -> None:
    """Ray Train's ``train_loop_per_worker`` for every training job."""
    TrainingWorker(spec).run()
