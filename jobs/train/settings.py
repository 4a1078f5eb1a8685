"""The typed config sections every training job shares: optimiser, scaling, run and the job's base."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from jobs.common.ray_runtime import RayConfig
from jobs.common.tracking import TrackingConfig


@dataclass(frozen=True, kw_only=True)
class ScalingSettings:
    """Ray Train's worker group: how many workers, and what each reserves."""
    num_workers: int = 2  # data-parallel (DDP) workers; 0 runs the loop in the driver process
    use_gpu: bool = False  # each worker reserves gpus_per_worker GPUs and trains on one
    # Fractional CPUs leave room for the Ray Data read/tokenize stages: two workers reserving a
    # whole CPU each on a 2-CPU node starve the readers and the job waits on itself forever.
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 1.0  # with use_gpu
    # Custom Ray resources each worker reserves besides CPU and GPU, e.g. {train_slot: 1} on a cluster whose
    # training nodes declare `--resources='{"train_slot": 1}'`: one worker per such node, whatever its CPUs.
    custom_resources: dict[str, float] = field(default_factory=dict)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo without
    torch_threads: int = 1  # intra-op threads per worker; workers x threads <= cores
    # Where the workers go: PACK fills a node first (Ray's default), SPREAD puts them on different nodes
    # when it can, STRICT_SPREAD only on different nodes (the run waits until there are enough).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Elastic training: go on with as few as min_workers when nodes are lost, and grow back to num_workers
    # when capacity returns (Ray Train checks every resize_check_s). Each resize restarts the group from
    # the last checkpoint, so it needs run.max_failures >= 1. A group of k workers accumulates
    # num_workers / k micro-batches per step: the global batch and the schedule stay those of num_workers.
    min_workers: int | None = None  # None: a fixed group of num_workers
    resize_check_s: float = 60.0  # with min_workers: how often a running group looks for more capacity

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0 (0 runs the loop in the driver process)")
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("backend nccl needs use_gpu: true")
        if any(name in ("CPU", "GPU") or amount <= 0 for name, amount in self.custom_resources.items()):
            raise ValueError(f"scaling.custom_resources {self.custom_resources}: positive amounts of resources "
                             "other than CPU and GPU (those are cpus_per_worker and gpus_per_worker)")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(f"scaling.min_workers ({self.min_workers}) must be between 1 and "
                             f"scaling.num_workers ({self.num_workers})")

    @property
    def ray_num_workers(self) -> int | tuple[int, int]:
        """Ray Train's ``num_workers``: a (min, max) range when elastic."""
        return self.num_workers if self.min_workers is None else (self.min_workers, self.num_workers)

    @property
    def world_size(self) -> int:
        return max(self.num_workers, 1)


@dataclass(frozen=True, kw_only=True)
class OptimSettings:
    """AdamW, its learning-rate schedule, and the training loop's batches and steps."""
    epochs: int = 3  # passes over the training split
    batch_size: int = 32  # per worker, per micro-batch
    lr: float = 1e-4  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.01  # AdamW's decoupled decay, on matrices only (not biases or norms)
    warmup_ratio: float = 0.06  # fraction of the optimiser steps over which lr rises linearly from 0
    schedule: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "linear"  # decay after warm-up
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    grad_accum_steps: int = 1  # micro-batches per optimiser step; an epoch's trailing partial group is applied
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 autocast on GPU only
    seed: int = 0  # initial weights (the same on every rank), shuffling and dropout
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    log_every_steps: int = 10  # training loss and lr to MLflow every this many optimiser steps
    shuffle_buffer_rows: int = 2048  # local shuffle buffer per worker
    length_grouping: int = 16  # sort this many batches' worth of rows by length before batching; 0: off
    early_stopping_patience: int | None = None  # stop after this many epochs without a better run.checkpoint_metric
    # torch.compile the model inside each worker (in place, before DDP wraps it). On 2 CPU cores MiniRBT's
    # steady steps in the job ran 1.04x as fast as eager, and compiling made a 3-epoch run 1.86x as long:
    # off by default; measure it on your hardware before a long run (BENCHMARKS.md, question 2).
    compile: bool = False
    # torch.compile's backend: inductor generates fused kernels (what pays, when anything does); aot_eager
    # traces forward and backward through dynamo and AOTAutograd but runs them eagerly (no code generation):
    # PyTorch's first step when a compiled run fails or differs, and the test suite's cheap check of the
    # job's compile wiring (inductor is checked in-process, tests/unit/test_train_compile.py).
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"

    def __post_init__(self) -> None:
        # Checked here, not left to AdamW: a bad value fails the job (or a sweep's trial) as it loads, before
        # a Ray worker starts, where AdamW would refuse it only in every worker, tens of seconds later.
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("epochs, batch_size and grad_accum_steps must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive learning rate, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.log_every_steps < 1 or self.shuffle_buffer_rows < 0 or self.length_grouping < 0:
            raise ValueError("log_every_steps must be >= 1, shuffle_buffer_rows and length_grouping >= 0")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 or null, got {self.early_stopping_patience}")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The Ray Train run: its name, where its checkpoints live, restarts, and which checkpoints are kept."""
    name: str | None = None  # Ray Train run name; None: a new unique name per launch
    storage_path: str = "runs/ray"  # local folder, shared mount or s3://... on a cluster
    # s3:// storage: tries of each request of a checkpoint's upload or download (the AWS SDK's standard retry,
    # exponential backoff up to 20 s; pyarrow's default is 3): a 503 storm must not fail an epoch's checkpoint
    storage_request_attempts: int = 10
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    keep_checkpoints: int = 2  # the best this many by checkpoint_metric are kept (and logged as models)
    checkpoint_metric: str = "val_loss"  # a validation metric: ranks the kept checkpoints, drives early stopping
    checkpoint_mode: Literal["min", "max"] = "min"  # whether checkpoint_metric is better lower or higher
    audit_shards: bool = False  # write per-rank row ids and final parameter digests (tests, audits)
    # Same seed, config and worker count give the same loss curve: the training split is materialised
    # and split in order (Ray Data's streaming split hands blocks to whichever worker asks first).
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.storage_request_attempts < 1:
            raise ValueError(f"run.storage_request_attempts must be >= 1, got {self.storage_request_attempts}")


@dataclass(frozen=True, kw_only=True)
class TrainingJobConfig:
    """The sections of every training job's config; a job subclasses it with its data and model."""
    optim: OptimSettings = field(default_factory=OptimSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    baselines: bool = True  # measure the task's reference models on the same split, in the same run

    def __post_init__(self) -> None:
        if self.optim.precision != "fp32" and not self.scaling.use_gpu:
            raise ValueError("optim.precision bf16/fp16 is a GPU setting; CPU runs stay fp32")
        if self.scaling.min_workers is not None and self.run.max_failures < 1:
            raise ValueError("scaling.min_workers (elastic training) resizes the group by restarting it: "
                             "set run.max_failures >= 1")

    def node_read_paths(self) -> dict[str, str | None]:
        """The paths the job's Ray workers read and write on whichever node they run (``jobs.common.shared_storage``).

        A job adds its data and model paths to these.
        """
        return {"run.storage_path": self.run.storage_path}
