"""A sweep's typed config: the job to train, the search space, the early-stopping scheduler, the budget."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from jobs.common import config as config_lib
from jobs.common.ray_runtime import RayConfig
from jobs.common.tracking import TrackingConfig


@dataclass(frozen=True, kw_only=True)
class Dimension:
    """One hyperparameter's range, keyed by the same dotted name as ``--set`` (``optim.lr``)."""
    # loguniform / uniform: a float in [low, high] (log: even in log space, for rates); randint: an
    # integer in [low, high); choice: one of values at random; grid: every one of values, each trial
    # of the sweep once per grid point (num_samples trials per point of the grid).
    kind: Literal["loguniform", "uniform", "randint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.kind in ("choice", "grid"):
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError(f"a {self.kind} dimension takes values (a non-empty list), not low/high")
            return
        if self.values is not None or self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.kind} dimension takes low < high, not values")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform dimension needs low > 0")

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform" or (self.kind in ("choice", "grid") and _spans_decades(self.values))


def _spans_decades(values: list[Any]) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return len(numbers) == len(values) and max(numbers) / min(numbers) >= 100 and math.isfinite(max(numbers))


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    """Early stopping across trials, fed by each epoch's validation metric."""
    # asha: after grace_epochs, then every reduction_factor times as many, a trial below the best
    # 1 / reduction_factor of those at the same epoch stops. fifo: every trial trains all its epochs.
    kind: Literal["asha", "fifo"] = "asha"
    grace_epochs: int = 1  # epochs every trial trains before it can be stopped
    reduction_factor: float = 2.0  # each rung keeps the best 1 / reduction_factor of the trials that reach it

    def __post_init__(self) -> None:
        if self.grace_epochs < 1 or self.reduction_factor <= 1:
            raise ValueError("scheduler.grace_epochs must be >= 1 and scheduler.reduction_factor > 1")


@dataclass(frozen=True)
class TrainingJob:
    """A training job a sweep can run: its config class and its ``prepare`` for the one training driver."""
    name: str
    config_class: type
    prepare: Callable[..., Any]



@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A search over one training job's config."""
    EXAMPLE_OVERRIDE: ClassVar[str] = "num_samples=4"  # --help's --set example (a unit test loads it)
    job: Literal["finetune_classifier", "train_seq2seq"] = "finetune_classifier"  # the training job each trial runs
    job_config: str | None = "configs/finetune_classifier.local-cpu.yaml"  # its YAML (null: its defaults)
    job_overrides: list[str] = field(default_factory=list)  # key=value items for every trial, as its --set
    space: dict[str, Dimension] = field(default_factory=dict)  # dotted job-config key -> its range
    metric: str | None = None  # what a trial is judged by; null: the job's run.checkpoint_metric
    mode: Literal["min", "max"] | None = None  # null: the job's run.checkpoint_mode
    num_samples: int = 8  # trials drawn at random (with grid dimensions: per point of the grid)
    max_concurrent: int | None = None  # trials at once; null: as many as the cluster's CPUs hold
    seed: int = 0  # the random draws of the space
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    # The sweep's name: its Tune experiment and parent run. null: one derived from this config, so the
    # same command resumes a killed sweep; name a sweep to run the same config afresh.
    name: str | None = None
    storage_path: str = "runs/sweeps"  # Tune's state and the trials' checkpoints (shared storage on a cluster)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="sweeps"))
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or (self.max_concurrent is not None and self.max_concurrent < 1):
            raise ValueError("num_samples and max_concurrent must be >= 1")

    def sweep_name(self) -> str:
        if self.name:
            return self.name
        digest = hashlib.sha1(json.dumps(config_lib.to_dict(self), sort_keys=True, default=str).encode())
        return f"sweep-{self.job}-{digest.hexdigest()[:8]}"
