"""The Ray Train DDP loop shared by every training job.

A job supplies a ``TrainingTask`` (how to build its model, turn a dataset shard into batches,
compute the loss and evaluation sums, and export the model); this module owns the rest:
device and process group, optimiser and schedule, mixed precision, gradient accumulation and
clipping, distributed evaluation, checkpoints through ``ray.train.report``, resumption from
``ray.train.get_checkpoint()`` and rank-0 MLflow logging.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from jobs.tracking import MetricLog, TrackingTarget

log = logging.getLogger(__name__)  # Ray Train forwards worker logs to the driver once

STATE_FILE = "train_state.pt"
# Fault-injection tests slow each optimiser step by this many seconds so that a SIGKILL lands
# mid-epoch on a seconds-long tiny run; unset (the default) it costs nothing.
STEP_DELAY_ENV = "TEXT_JOBS_TEST_STEP_DELAY_S"
COMPLETE_MARKER = "COMPLETE"
EXPORT_DIR = "model"


@dataclass(frozen=True, kw_only=True)
class ScalingSettings:
    num_workers: int = 2
    use_gpu: bool = False
    # Fractional CPUs leave room for the Ray Data read/tokenize stages: two workers reserving a
    # whole CPU each on a 2-CPU node starve the readers and the job waits on itself forever.
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 1.0
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo without
    torch_threads: int = 1  # intra-op threads per worker; workers x threads <= cores

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0 (0 runs the loop in the driver process)")
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("backend nccl needs use_gpu: true")


@dataclass(frozen=True, kw_only=True)
class OptimSettings:
    epochs: int = 3
    batch_size: int = 32  # per worker, per micro-batch
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "linear"
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    grad_accum_steps: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 autocast on GPU only
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    log_every_steps: int = 10
    shuffle_buffer_rows: int = 2048  # local shuffle buffer per worker
    length_grouping: int = 16  # sort this many batches' worth of rows by length before batching; 0: off
    early_stopping_patience: int | None = None  # stop after this many epochs without a better run.checkpoint_metric

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("epochs, batch_size and grad_accum_steps must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    name: str | None = None  # Ray Train run name; None: a new unique name per launch
    storage_path: str = "runs/ray"  # local folder, shared mount or s3://... on a cluster
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    keep_checkpoints: int = 2
    checkpoint_metric: str = "val_loss"
    checkpoint_mode: Literal["min", "max"] = "min"
    audit_shards: bool = False  # write per-rank row ids and final parameter digests (tests, audits)
    # Same seed, config and worker count give the same loss curve: the training split is materialised
    # and split in order (Ray Data's streaming split hands blocks to whichever worker asks first).
    deterministic: bool = False


@dataclass(frozen=True)
class LoopContext:
    """What the driver resolved for the workers: absolute paths and the MLflow run."""
    tracking: TrackingTarget
    mlflow_run_id: str
    steps_per_epoch: int
    checkpoint_metric: str = "val_loss"
    checkpoint_mode: str = "min"
    audit_dir: str | None = None


class TrainingTask(Protocol):
    primary_metric: str  # the headline validation metric, e.g. "accuracy"

    def build_model(self) -> torch.nn.Module: ...

    def batches(self, split: str, epoch: int, seed: int, shuffle: bool) -> Iterable[dict[str, Any]]: ...

    def train_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
        """Mean loss of the batch, and its sample and token counts."""

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Additive statistics of one batch (summed over batches and workers)."""

    def zero_eval_sums(self) -> dict[str, torch.Tensor]:
        """The statistics of no rows: a worker whose shard is empty still joins the all-reduce."""

    def eval_metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, float]: ...

    def export(self, model: torch.nn.Module, directory: Path) -> None: ...


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "inverse_sqrt":
            return math.sqrt(max(warmup_steps, 1) / max(step + 1, 1))
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear decay to zero
    return factor


def build_optimizer(model: torch.nn.Module, optim: OptimSettings, total_steps: int):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Biases and LayerNorm weights are not decayed (standard for BERT/Transformer training).
        (no_decay if param.ndim < 2 else decay).append(param)
    # The fused kernel (CPU and CUDA) steps MiniRBT-H256's AdamW in 8 ms against 47 ms for the
    # default for-each one on one CPU thread: ~4% of a training step (BENCHMARKS.md, question 2).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=optim.lr, fused=fused or None)
    warmup = int(optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim.schedule, warmup, total_steps))
    return optimizer, scheduler


def total_optimizer_steps(optim: OptimSettings, steps_per_epoch: int) -> int:
    total = optim.epochs * math.ceil(steps_per_epoch / optim.grad_accum_steps)
    return min(total, optim.max_steps) if optim.max_steps else total


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(values: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Sum tensors over workers (a no-op for one process); keys are reduced in sorted order."""
    if not _distributed():
        return values
    keys = sorted(values)
    flat = torch.cat([values[k].detach().double().reshape(-1).to(device) for k in keys])
    torch.distributed.all_reduce(flat)
    out, offset = {}, 0
    for key in keys:
        n = values[key].numel()
        out[key] = flat[offset:offset + n].reshape(values[key].shape).cpu()
        offset += n
    return out


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def parameter_digest(model: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_audit(directory: str, rank: int, name: str, payload: dict[str, Any]) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}-rank{rank}.json").write_text(json.dumps(payload))


def _save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, step: int, epoch: int,
                     config_dict: dict[str, Any], task: TrainingTask, best: float | None, stale_epochs: int) -> None:
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "step": step, "epoch": epoch, "rng": rng_state(), "best": best, "stale_epochs": stale_epochs},
               directory / STATE_FILE)
    (directory / "job_config.json").write_text(json.dumps(config_dict, indent=2, default=str))
    task.export(unwrap(model), directory / EXPORT_DIR)
    (directory / COMPLETE_MARKER).write_text(json.dumps({"step": step, "epoch": epoch}))  # written last


def _load_state(directory: Path, device: torch.device) -> dict[str, Any] | None:
    """The training state of a checkpoint directory, or None when it is incomplete or unreadable."""
    if not (directory / COMPLETE_MARKER).is_file():
        return None
    try:
        return torch.load(directory / STATE_FILE, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None


def _state_of(checkpoint, device: torch.device) -> dict[str, Any] | None:
    with checkpoint.as_directory() as directory:  # a download when the storage is remote
        return _load_state(Path(directory), device)


def load_latest_valid_state(checkpoint, device: torch.device) -> dict[str, Any] | None:
    """State of Ray's latest checkpoint; if that one is half-written, the newest complete sibling.

    Siblings are listed through the checkpoint's own filesystem, so the fallback works on
    object stores as on local disks.
    """
    import posixpath

    import pyarrow.fs as pafs
    import ray.train

    state = _state_of(checkpoint, device)
    if state is not None:
        return state
    log.warning("checkpoint %s is incomplete or unreadable; looking for an earlier one", checkpoint.path)
    filesystem, run_dir = checkpoint.filesystem, posixpath.dirname(checkpoint.path.rstrip("/"))
    siblings = [info.path for info in filesystem.get_file_info(pafs.FileSelector(run_dir))
                if info.type == pafs.FileType.Directory and posixpath.basename(info.path).startswith("epoch-")]
    for candidate in sorted(siblings, reverse=True):  # names sort by epoch and step
        if candidate.rstrip("/") != checkpoint.path.rstrip("/"):
            state = _state_of(ray.train.Checkpoint(candidate, filesystem=filesystem), device)
            if state is not None:
                log.warning("resuming from %s instead", candidate)
                return state
    log.warning("no complete checkpoint found: starting from scratch")
    return None


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    # Dropout differs between ranks and epochs but is reproducible, with or without a restart.
    return (seed * 1_000_003 + rank * 10_007 + epoch) % 2**63


def run_training(task: TrainingTask, optim: OptimSettings, scaling: ScalingSettings, ctx: LoopContext,
                 config_dict: dict[str, Any]) -> None:
    """The per-worker loop (``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(scaling.torch_threads)
    device = ray.train.torch.get_device()
    seed_everything(optim.seed)  # identical initial weights on every rank
    model = ray.train.torch.prepare_model(task.build_model())
    total_steps = total_optimizer_steps(optim, ctx.steps_per_epoch)
    optimizer, scheduler = build_optimizer(model, optim, total_steps)
    scaler = torch.amp.GradScaler(device.type) if optim.precision == "fp16" else None
    metrics_log = MetricLog(ctx.tracking, ctx.mlflow_run_id, enabled=rank == 0)
    step_delay_s = float(os.environ.get(STEP_DELAY_ENV) or 0)

    step, start_epoch, best, stale_epochs = 0, 0, None, 0
    checkpoint = ray.train.get_checkpoint()
    state = load_latest_valid_state(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step, start_epoch = state["step"], state["epoch"] + 1
        best, stale_epochs = state.get("best"), state.get("stale_epochs", 0)
        restore_rng(state["rng"])
        metrics_log.record_restart(step)
        if rank == 0:
            log.info("[train] resumed from checkpoint at epoch %d, step %d", state["epoch"], step)

    model.train()
    last_epoch = optim.epochs - 1
    for epoch in range(start_epoch, optim.epochs):
        epoch_start = window_start = time.perf_counter()
        window = {"loss": torch.zeros(()), "samples": torch.zeros(()), "tokens": torch.zeros(()),
                  "micro": torch.zeros(())}
        epoch_counts = {"samples": torch.zeros(()), "tokens": torch.zeros(())}
        seen_ids: list[str] = []
        micro = 0
        torch.manual_seed(_epoch_seed(optim.seed, rank, epoch))
        optimizer.zero_grad(set_to_none=True)  # an epoch never inherits a partial accumulation
        for batch in task.batches("train", epoch=epoch, seed=optim.seed, shuffle=True):
            if ctx.audit_dir is not None and "ids" in batch:
                seen_ids.extend(batch["ids"])
            with autocast_for(optim.precision, device):
                loss, n_samples, n_tokens = task.train_loss(model, batch)
            scaled = loss / optim.grad_accum_steps
            # DDP syncs gradients only on the micro-batch that completes an accumulation.
            sync = (micro + 1) % optim.grad_accum_steps == 0
            with (nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()):
                (scaler.scale(scaled) if scaler else scaled).backward()
            window["loss"] += loss.detach().float().cpu()
            window["micro"] += 1
            for counts in (window, epoch_counts):
                counts["samples"] += n_samples
                counts["tokens"] += n_tokens
            micro += 1
            if not sync:
                continue
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
            step += 1
            if step_delay_s:
                time.sleep(step_delay_s)
            if step % optim.log_every_steps == 0:
                totals = all_reduce_sum(window, device)
                train_loss = float(totals["loss"] / totals["micro"])
                metrics_log.log({"train_loss": train_loss, "learning_rate": scheduler.get_last_lr()[0],
                                 "epoch": epoch}, step)
                if rank == 0:
                    rate = float(totals["samples"]) / (time.perf_counter() - window_start)
                    log.info("[train] epoch %d step %d/%d loss %.4f lr %.2e %.1f samples/s", epoch, step,
                             total_steps, train_loss, scheduler.get_last_lr()[0], rate)
                window = {k: torch.zeros(()) for k in window}
                window_start = time.perf_counter()
            if optim.max_steps and step >= optim.max_steps:
                break
        elapsed = time.perf_counter() - epoch_start
        totals = all_reduce_sum(epoch_counts, device)
        metrics = {"epoch": epoch, "step": step,
                   "train_samples_per_s": float(totals["samples"]) / elapsed,
                   "train_tokens_per_s": float(totals["tokens"]) / elapsed,
                   "epoch_seconds": elapsed}
        metrics.update(evaluate(task, model, "val", device, optim.precision))
        monitored = metrics[ctx.checkpoint_metric]
        if _improved(monitored, best, ctx.checkpoint_mode):
            best, stale_epochs = monitored, 0
        else:
            stale_epochs += 1
        # Metrics are all-reduced, so every rank takes the same decision.
        early_stop = optim.early_stopping_patience is not None and stale_epochs >= optim.early_stopping_patience
        if early_stop and rank == 0:
            log.info("[train] early stopping: %s did not improve for %d epochs", ctx.checkpoint_metric, stale_epochs)
        finished = epoch == last_epoch or early_stop or bool(optim.max_steps and step >= optim.max_steps)
        if finished:
            metrics.update(evaluate(task, model, "test", device, optim.precision))
        if ctx.audit_dir is not None:
            _write_audit(ctx.audit_dir, rank, f"epoch{epoch}", {"ids": seen_ids})
        metrics_log.log(metrics, step)
        metrics_log.flush()
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                _save_checkpoint(Path(tmp), model, optimizer, scheduler, scaler, step, epoch, config_dict, task,
                                 best, stale_epochs)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{epoch:04d}-step-{step:07d}")
        if rank == 0:
            headline = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("val_", "test_"))}
            log.info("[train] epoch %d step %d: %s (%.0fs)", epoch, step, headline, elapsed)
        if finished:
            break
    if ctx.audit_dir is not None:
        _write_audit(ctx.audit_dir, rank, "final", {"parameter_digest": parameter_digest(model), "step": step})


def iterate_shard(shard, batch_size: int, collate, seed: int, epoch: int, shuffle: bool,
                  shuffle_buffer_rows: int, group_by_length: int = 0) -> Iterator[dict[str, Any]]:
    """Batches of a worker's dataset shard.

    ``group_by_length > 1`` reads that many batches' worth of rows at a time, sorts them by
    ``num_tokens`` and cuts batches from the sorted rows (in shuffled order), so each batch pads
    to a similar length. The number of batches depends only on the shard's row count, so
    workers with equal shards still take the same number of DDP steps.
    """
    kwargs: dict[str, Any] = {}
    if shuffle and shuffle_buffer_rows > 0:
        kwargs = {"local_shuffle_buffer_size": shuffle_buffer_rows, "local_shuffle_seed": seed + epoch}
    if group_by_length <= 1:
        return shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=False,
                                        prefetch_batches=2, **kwargs)
    return _length_grouped(shard.iter_batches(batch_size=batch_size * group_by_length, batch_format="numpy",
                                              prefetch_batches=1, **kwargs),
                           batch_size, collate, np.random.default_rng(seed * 1_000_003 + epoch))


def _length_grouped(chunks, batch_size: int, collate, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    for chunk in chunks:
        order = np.argsort(chunk["num_tokens"], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for index in rng.permutation(len(batches)):
            rows = batches[index]
            yield collate({key: values[rows] for key, values in chunk.items()})


def worker_env() -> dict[str, str]:
    """Environment for training workers: quiet tokenizer threads, no MLflow telemetry."""
    env = {"TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if os.environ.get(STEP_DELAY_ENV):  # workers of an already running Ray do not see the driver's env
        env[STEP_DELAY_ENV] = os.environ[STEP_DELAY_ENV]
    return env
