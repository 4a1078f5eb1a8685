"""Driver-side plumbing shared by the training jobs: run naming, the MLflow run, the TorchTrainer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.paths import filesystem_for, to_uri
from jobs import config as config_lib
from jobs.datasets import EvalShardingDataConfig
from jobs.tracking import TrackingTarget, client_for, environment_tags
from jobs.training import LoopContext, RunSettings, ScalingSettings, worker_env

RUN_NAME_TAG = "ray_run_name"


def run_name_and_storage(run: RunSettings, prefix: str) -> tuple[str, str]:
    """A fresh unique name unless one is configured (then an earlier run of that name resumes)."""
    name = run.name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage = run.storage_path if "://" in run.storage_path else str(Path(run.storage_path).resolve())
    if run.audit_shards and "://" in storage:
        raise ValueError("run.audit_shards writes per-rank files with local file I/O: "
                         "use a local or mounted run.storage_path with it")
    return name, storage


def ray_storage(storage_path: str):
    """``(path, filesystem)`` for Ray Train's RunConfig: URIs get the filesystem from ``data_pipeline.paths``.

    Ray would otherwise build its own from the URI in each process, and those that do not see
    ``AWS_ENDPOINT_URL`` (workers of a Ray started earlier) would write to AWS instead.
    With a filesystem, Ray wants the path without its scheme.
    """
    if "://" not in storage_path:
        return storage_path, None
    filesystem, path = filesystem_for(storage_path)
    return path, filesystem


def checkpoint_uri(checkpoint, storage_path: str) -> str:
    """Where a result's checkpoint lives, as a URI when the storage is one (Ray reports it scheme-less)."""
    return to_uri(checkpoint.path, storage_path)


def start_or_resume_mlflow_run(target: TrackingTarget, run_name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The MLflow run of this Ray Train run: the existing one when a rerun resumes, else a new one."""
    client = client_for(target)
    found = client.search_runs([target.experiment_id], filter_string=f"tags.{RUN_NAME_TAG} = '{run_name}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(target.experiment_id, run_name=run_name, tags={**tags, RUN_NAME_TAG: run_name})
    return run.info.run_id, False


@dataclass(frozen=True)
class TrainingRun:
    """One training job's run: its Ray Train name and storage, and the MLflow run it logs to."""
    name: str
    storage_path: str
    mlflow_run_id: str

    def loop_context(self, target: TrackingTarget, run: RunSettings, steps_per_epoch: int) -> LoopContext:
        audit_dir = str(Path(self.storage_path) / self.name / "audit") if run.audit_shards else None
        return LoopContext(tracking=target, mlflow_run_id=self.mlflow_run_id, steps_per_epoch=steps_per_epoch,
                           checkpoint_metric=run.checkpoint_metric, checkpoint_mode=run.checkpoint_mode,
                           audit_dir=audit_dir)


def open_training_run(target: TrackingTarget, run: RunSettings, prefix: str, tags: dict[str, str],
                      config_dict: dict[str, Any], params: dict[str, Any], dicts: dict[str, Any],
                      baselines: dict[str, float]) -> TrainingRun:
    """Name the run and start its MLflow run, or find both again when a rerun of that name resumes.

    A new run gets the flattened config and ``params`` as params, ``dicts`` as JSON artifacts
    and the baselines as metrics; a resumed run already has them (MLflow params are immutable).
    """
    import mlflow

    name, storage_path = run_name_and_storage(run, prefix)
    run_id, resumed = start_or_resume_mlflow_run(target, name, {**environment_tags(), **tags})
    if not resumed:
        mlflow.set_tracking_uri(target.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params(config_lib.flatten(config_dict))
            mlflow.log_params(params)
            for artifact, payload in dicts.items():
                mlflow.log_dict(payload, artifact)
            if baselines:
                mlflow.log_metrics(baselines)
    return TrainingRun(name=name, storage_path=storage_path, mlflow_run_id=run_id)


def fit(trainer, target: TrackingTarget, training_run: TrainingRun):
    """``trainer.fit()``; a failure marks the MLflow run FAILED before it propagates."""
    try:
        return trainer.fit()
    except Exception:
        client_for(target).set_terminated(training_run.mlflow_run_id, status="FAILED")
        raise


def make_trainer(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], scaling: ScalingSettings,
                 run: RunSettings, run_name: str, storage_path: str, datasets: dict[str, Any],
                 eval_splits: list[str]):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    path, filesystem = ray_storage(storage_path)
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=None if scaling.backend == "auto" else scaling.backend),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.keep_checkpoints, checkpoint_score_attribute=run.checkpoint_metric,
                checkpoint_score_order=run.checkpoint_mode),
            worker_runtime_env={"env_vars": worker_env()}),
        datasets=datasets,
        dataset_config=EvalShardingDataConfig(eval_splits, deterministic_train=run.deterministic),
    )
