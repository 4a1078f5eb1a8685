"""The typed sections of a sweep's config: the search space, the early-stopping scheduler, the job to train."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


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

