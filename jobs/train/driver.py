"""The one training driver: every training job's orchestration, from a validated plan to a registered model.

``run_training_job(config, prepare)``: tracking -> the job's ``prepare`` (inputs validated, baselines
measured, nothing trained yet) -> Ray -> CPU budget -> the MLflow run (new, or found again when a
run of the same name resumes) -> ``TorchTrainer`` over ``jobs.train.loop.train_worker`` -> fit ->
the final checkpoint's model logged, registered and aliased -> a ``TrainingOutcome``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from data_pipeline.paths import filesystem_for, to_uri
from jobs.common import config as config_lib
from jobs.common.datasets import SPLIT_CONTEXTS, DatasetSummary, log_datasets
from jobs.common.naming import unique_run_name
from jobs.common.ray_runtime import check_cpu_budget, init_ray
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.tracking import (TrackingTarget, client_for, environment_tags, prepare_tracking,
                                  set_description, start_system_metrics, stop_system_metrics, system_metrics_env)
from jobs.train.callbacks import STEP_DELAY_ENV
from jobs.train.checkpoint import EXPORT_DIR
from jobs.train.data_config import EvalShardingDataConfig
from jobs.train.loop import LoopContext, WorkerSpec, train_worker
from jobs.train.run_record import headline_metrics, training_description, version_tags
from jobs.train.settings import RunSettings, ScalingSettings, TrainingJobConfig
from jobs.train.task import TrainingPlan

EVAL_SPLITS = ["val", "test"]
ConfigT = TypeVar("ConfigT", bound=TrainingJobConfig)

RUN_NAME_TAG = "ray_run_name"


def run_name_and_storage(run: RunSettings, prefix: str) -> tuple[str, str]:
    """A fresh unique name unless one is configured (then an earlier run of that name resumes)."""
    name = run.name or unique_run_name(prefix)
    storage = run.storage_path if "://" in run.storage_path else str(Path(run.storage_path).resolve())
    if run.audit_shards and "://" in storage:
        raise ValueError("run.audit_shards writes per-rank files with local file I/O: "
                         "use a local or mounted run.storage_path with it")
    return name, storage


def ray_storage(storage_path: str, request_attempts: int | None = None):
    """``(path, filesystem)`` for Ray Train's RunConfig: URIs get the filesystem from ``data_pipeline.paths``.

    Ray would otherwise build its own from the URI in each process, and those that do not see
    ``AWS_ENDPOINT_URL`` (workers of a Ray started earlier) would write to AWS instead.
    With a filesystem, Ray wants the path without its scheme. Ray uploads each checkpoint itself,
    outside the project's retried storage path: the filesystem's own requests are tried
    ``request_attempts`` times (``run.storage_request_attempts``), with the SDK's backoff.
    """
    if "://" not in storage_path:
        return storage_path, None
    filesystem, path = filesystem_for(storage_path, request_attempts=request_attempts)
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

    def loop_context(self, target: TrackingTarget, run: RunSettings, micro_batches_per_epoch: int) -> LoopContext:
        audit_dir = str(Path(self.storage_path) / self.name / "audit") if run.audit_shards else None
        return LoopContext(tracking=target, mlflow_run_id=self.mlflow_run_id,
                           micro_batches_per_epoch=micro_batches_per_epoch,
                           checkpoint_metric=run.checkpoint_metric, checkpoint_mode=run.checkpoint_mode,
                           audit_dir=audit_dir)


def open_training_run(target: TrackingTarget, run: RunSettings, prefix: str, tags: dict[str, str],
                      config_dict: dict[str, Any], params: dict[str, Any], dicts: dict[str, Any],
                      baselines: dict[str, float],
                      datasets: list[tuple[DatasetSummary, str]] | None = None) -> TrainingRun:
    """Name the run and start its MLflow run, or find both again when a rerun of that name resumes.

    A new run gets the flattened config and ``params`` as params, ``dicts`` as JSON artifacts,
    the baselines as metrics and its input datasets; a resumed run already has them (MLflow
    params are immutable).
    """
    import mlflow

    name, storage_path = run_name_and_storage(run, prefix)
    run_id, resumed = start_or_resume_mlflow_run(target, name, {**environment_tags(), **tags})
    if not resumed:
        mlflow.set_tracking_uri(target.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params(redact_mapping(config_lib.flatten(config_dict)))
            mlflow.log_params(redact_mapping(params))
            for artifact, payload in dicts.items():
                mlflow.log_dict(payload, artifact)
            if baselines:
                mlflow.log_metrics(baselines)
            log_datasets(datasets or [])
        # leaving the block ended the run (FINISHED): it runs until trained, and system metrics stop at an end
        client_for(target).update_run(run_id, status="RUNNING")
    return TrainingRun(name=name, storage_path=storage_path, mlflow_run_id=run_id)


def fit(trainer, target: TrackingTarget, training_run: TrainingRun):
    """``trainer.fit()``; a failure marks the MLflow run FAILED before it propagates."""
    try:
        return trainer.fit()
    except Exception:
        client_for(target).set_terminated(training_run.mlflow_run_id, status="FAILED")
        raise


def worker_env() -> dict[str, str]:
    """Environment for training workers: quiet tokenizer threads, no MLflow telemetry."""
    env = {"TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if os.environ.get(STEP_DELAY_ENV):  # workers of an already running Ray do not see the driver's env
        env[STEP_DELAY_ENV] = os.environ[STEP_DELAY_ENV]
    return {**env, **system_metrics_env()}


def monitored_train_worker(spec: WorkerSpec) -> None:
    """``train_worker``; the first worker of each node samples that node's system metrics into the run
    (``system/node_<n>/...``) while it trains, and stops sampling however the loop ends."""
    import ray.train

    context = ray.train.get_context()
    monitor = None
    if context.get_local_rank() == 0:
        monitor = start_system_metrics(spec.context.tracking, spec.context.mlflow_run_id,
                                       node_id=f"node_{context.get_node_rank()}")
    try:
        train_worker(spec)
    finally:
        stop_system_metrics(monitor)


def make_trainer(spec: WorkerSpec, scaling: ScalingSettings, run: RunSettings, training_run: TrainingRun,
                 datasets: dict[str, Any]):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    path, filesystem = ray_storage(training_run.storage_path, run.storage_request_attempts)
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        functools.partial(monitored_train_worker, spec),  # the typed spec itself, not a string-keyed dict
        torch_config=TorchConfig(backend=None if scaling.backend == "auto" else scaling.backend),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=training_run.name, storage_path=path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.keep_checkpoints, checkpoint_score_attribute=run.checkpoint_metric,
                checkpoint_score_order=run.checkpoint_mode),
            worker_runtime_env={"env_vars": worker_env()}),
        datasets=datasets,
        dataset_config=EvalShardingDataConfig(EVAL_SPLITS, deterministic_train=run.deterministic),
    )


@dataclass(frozen=True)
class TrainingOutcome:
    run_id: str
    metrics: dict[str, float]  # the last epoch's metrics and the baselines
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    checkpoint_path: str
    run_name: str
    details: dict[str, Any]  # the plan's JSON artifacts (label names and counts, model config...)

    @property
    def model_dir(self) -> str:
        """The exported model inside the final checkpoint."""
        return f"{self.checkpoint_path}/{EXPORT_DIR}"


def run_training_job(config: ConfigT, prepare: Callable[[ConfigT, TrackingTarget], TrainingPlan]) -> TrainingOutcome:
    """Train, register and alias a model: the orchestration every training job shares."""
    from jobs.common.registry import log_and_register

    target = prepare_tracking(config.tracking)
    plan = prepare(config, target)  # everything that can be wrong with the inputs fails here

    init_ray(config.ray)
    scaling = config.scaling
    check_cpu_budget({"training workers": scaling.num_workers * scaling.cpus_per_worker, **plan.stage_cpus})
    config_dict = config_lib.to_dict(config)
    datasets = [(summary, SPLIT_CONTEXTS.get(split, split)) for split, summary in plan.datasets.items()]
    training_run = open_training_run(
        target, config.run, plan.run_prefix,
        tags={"num_workers": str(scaling.world_size), "job": plan.job, **plan.tags}, config_dict=config_dict,
        params={**{f"rows_{k}": v for k, v in plan.rows.items()}, **plan.params}, dicts=plan.dicts,
        baselines=plan.baselines, datasets=datasets)
    spec = WorkerSpec(task=plan.task, optim=config.optim, scaling=scaling, config_dict=config_dict,
                      context=training_run.loop_context(target, config.run, plan.micro_batches_per_epoch))
    monitor = start_system_metrics(target, training_run.mlflow_run_id, node_id="driver")
    try:
        result = fit(make_trainer(spec, scaling, config.run, training_run, plan.make_datasets()), target,
                     training_run)
        # The model of the last epoch (the one the test metrics measure) goes to the registry.
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        headline = headline_metrics(plan, metrics)
        with result.checkpoint.as_directory() as checkpoint_dir:
            registered = log_and_register(
                target, training_run.mlflow_run_id, plan.pyfunc_model, Path(checkpoint_dir) / EXPORT_DIR,
                config.tracking.registered_model, config.tracking.alias, input_example=plan.input_example,
                signature=plan.signature, step=int(metrics.get("step", 0)),
                version_tags=version_tags(datasets, headline, plan.baselines))
        log_checkpoint_models(target, training_run, result)
    finally:
        stop_system_metrics(monitor)
    set_description(target, training_run.mlflow_run_id,
                    training_description(plan, training_run.name, metrics, registered, datasets))
    client_for(target).set_terminated(training_run.mlflow_run_id)
    return TrainingOutcome(run_id=training_run.mlflow_run_id, metrics={**metrics, **plan.baselines},
                           model_uri=registered.model_uri, registered_name=registered.name,
                           registered_version=registered.version,
                           checkpoint_path=checkpoint_uri(result.checkpoint, training_run.storage_path),
                           run_name=training_run.name, details=plan.dicts)


def log_checkpoint_models(target: TrackingTarget, training_run: TrainingRun, result) -> None:
    """Each kept epoch checkpoint as an MLflow logged model (the run's "Logged models") with that epoch's metrics.

    No weights are uploaded: the model's ``checkpoint`` tag says where Ray Train keeps them (the final
    epoch's export is the run's registered ``model``). The metrics are the run's own points of that step,
    re-logged with the model's id as MLflow does for ``log_model(step=...)``.
    """
    from mlflow.entities import Metric

    client = client_for(target)
    run_id = training_run.mlflow_run_id
    logged = {m.name for m in client.search_logged_models([target.experiment_id],
                                                          filter_string=f"source_run_id='{run_id}'")}
    for checkpoint, reported in result.best_checkpoints or []:
        if "epoch" not in reported or "step" not in reported or f"epoch-{int(reported['epoch'])}" in logged:
            continue  # a rerun of a finished run: its checkpoints are logged already
        epoch, step = int(reported["epoch"]), int(reported["step"])
        model = client.create_logged_model(
            target.experiment_id, name=f"epoch-{epoch}", source_run_id=run_id, model_type="checkpoint",
            tags={"checkpoint": redact_text(checkpoint_uri(checkpoint, training_run.storage_path)),
                  "epoch": str(epoch), "step": str(step)})
        points = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id)
                  for key in reported if isinstance(reported[key], (int, float))
                  for m in client.get_metric_history(run_id, key) if m.step == step]
        client.log_batch(run_id, metrics=points)
        client.finalize_logged_model(model.model_id, "READY")


def report_header(title: str, outcome: TrainingOutcome, config: TrainingJobConfig) -> None:
    """The first lines of every training job's summary: where its run, model and checkpoint are."""
    print(f"\n=== {title} ===")
    print(f"MLflow run      : {outcome.run_id} (experiment '{config.tracking.experiment}')")
    if outcome.registered_name:
        print(f"registered model: {outcome.registered_name} version {outcome.registered_version} "
              f"(alias @{config.tracking.alias})")
    print(f"checkpoint      : {redact_text(outcome.checkpoint_path)}")
