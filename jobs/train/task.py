"""What a training job supplies to the one driver: a worker-side task and a driver-side plan.

A new training job is a config (a ``TrainingJobConfig`` subclass) plus a ``prepare`` function that
validates its inputs and returns a ``TrainingPlan``; the plan's ``task`` is pickled to every Ray
Train worker, where ``jobs.train.loop`` drives it. Nothing of the orchestration is copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


class TrainingTask(Protocol):
    """The model-specific part of the training loop; runs inside each Ray Train worker."""

    primary_metric: str  # the headline validation metric, e.g. "accuracy"
    headline_metrics: tuple[str, ...]  # what the end-of-epoch log line shows (all are logged to MLflow)

    def build_model(self) -> torch.nn.Module: ...

    def batches(self, split: str, epoch: int, seed: int, shuffle: bool) -> Iterable[dict[str, Any]]:
        """This worker's batches of ``split`` ("train", "val", "test")."""

    def train_loss(self, model: torch.nn.Module,
                   batch: dict[str, Any]) -> tuple[torch.Tensor, int | torch.Tensor, int | torch.Tensor]:
        """Mean loss of the batch, and its sample and token counts (tensors may stay on the device)."""

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Additive statistics of one batch (summed over batches and workers)."""

    def zero_eval_sums(self) -> dict[str, torch.Tensor]:
        """The statistics of no rows: a worker whose shard is empty still joins the all-reduce."""

    def eval_metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, float]: ...

    def export(self, model: torch.nn.Module, directory: Path) -> None: ...


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """Everything the driver needs from a job, decided on the driver before any compute."""
    task: TrainingTask
    run_prefix: str  # fresh run names are <prefix>-<time>-<hex>
    job: str  # the MLflow run's "job" tag
    rows: dict[str, int]  # validated rows per split
    micro_batches_per_epoch: int  # per worker
    stage_cpus: dict[str, float]  # CPUs the job's Ray Data stages reserve beside the workers
    make_datasets: Callable[[], dict[str, Any]]  # the Ray Datasets per split, built once Ray runs
    pyfunc_model: Any  # the mlflow.pyfunc.PythonModel registered with the final checkpoint's export
    input_example: Any
    params: dict[str, Any] = field(default_factory=dict)  # MLflow params beside the flattened config
    dicts: dict[str, Any] = field(default_factory=dict)  # JSON artifacts of the run
    baselines: dict[str, float] = field(default_factory=dict)  # reference models' metrics, same split
    tags: dict[str, str] = field(default_factory=dict)
    signature: Any = None  # the registered model's mlflow ModelSignature (None: MLflow infers it from the example)
    datasets: dict[str, Any] = field(default_factory=dict)  # split -> jobs.common.datasets.DatasetSummary


def require_rows(rows: dict[str, int], sources: dict[str, str], world_size: int = 1) -> None:
    """Refuse splits too small to train on, on the driver, before any Ray worker starts.

    A training split with no rows would train no step and still register the untrained model as
    the candidate; one with fewer rows than workers leaves a worker without a batch. An empty
    validation or test split gives no metric to choose or judge the model by.
    """
    problems = []
    for split, n in rows.items():
        needed = max(world_size, 1) if split == "train" else 1
        if n < needed:
            fewer = "no rows" if n == 0 else f"{n} row(s), fewer than the {world_size} training workers"
            problems.append(f"data.{split} ({sources.get(split, '?')}): {fewer}")
    if problems:
        raise ValueError("cannot train on these splits:\n  " + "\n  ".join(problems))
