"""The one training driver: every training job's orchestration, from a validated plan to a registered model.

``run_training_job(config, prepare)``: tracking -> the job's ``prepare`` (inputs validated, baselines
measured, nothing trained yet) -> Ray -> CPU budget -> the MLflow run, claimed for this launcher
(new, or found again when a run of the same name resumes) -> ``TorchTrainer`` over
``jobs.train.loop.train_worker`` -> the claim verified (its settle wait spent building the trainer)
-> fit -> the end-of-run steps (buffered metrics replayed, the final checkpoint's model logged,
registered and aliased, the run FINISHED) -> a ``TrainingOutcome``.
``jobs.train.run_tracking.RunTracker`` is the run's one owner of MLflow on the driver, and says
what happens when MLflow does not answer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from data_pipeline.paths import filesystem_for, to_uri
from jobs.common import config as config_lib
from jobs.common.datasets import SPLIT_CONTEXTS, DatasetSummary
from jobs.common.naming import unique_run_name
from jobs.common.ray_runtime import check_cpu_budget, init_ray
from jobs.common.shared_storage import require_shared
from jobs.common.redaction import redact_text
from jobs.common.tracking import (PARENT_RUN_TAG, TrackingTarget, environment_tags, prepare_tracking,
                                  start_system_metrics, stop_system_metrics, tracking_env)
from jobs.train.callbacks import FAULT_ENVS
from jobs.train.checkpoint import EXPORT_DIR
from jobs.train.data_config import EvalShardingDataConfig
from jobs.train.loop import LoopContext, WorkerSpec, train_worker
from jobs.train.run_record import headline_metrics, training_description, version_tags, what_it_is
from jobs.train.run_tracking import Registration, RunTracker
from jobs.train.settings import RunSettings, ScalingSettings, TrainingJobConfig
from jobs.train.task import TrainingPlan

EVAL_SPLITS = ["val", "test"]
ConfigT = TypeVar("ConfigT", bound=TrainingJobConfig)


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
                      baselines: dict[str, float], datasets: list[tuple[DatasetSummary, str]] | None = None,
                      tracker: RunTracker | None = None) -> TrainingRun:
    """Name the run and claim its MLflow run, or find both again when a rerun of that name resumes."""
    tracker = tracker or RunTracker(target, 0.0)
    name, storage_path = run_name_and_storage(run, prefix)
    run_id, _ = tracker.open(name, {**environment_tags(), **tags}, config_dict, params, dicts, baselines,
                             datasets or [], generated_name=run.name is None)
    return TrainingRun(name=name, storage_path=storage_path, mlflow_run_id=run_id)


def worker_env() -> dict[str, str]:
    """Environment for training workers: quiet tokenizer threads, no MLflow telemetry, the driver's MLflow
    client settings and test fault injection (workers of an already running Ray do not see the driver's env)."""
    env = {"TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.update({key: os.environ[key] for key in FAULT_ENVS if os.environ.get(key)})
    return {**env, **tracking_env()}


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
                 datasets: dict[str, Any], callbacks: Sequence[Any] = ()):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    path, filesystem = ray_storage(training_run.storage_path, run.storage_request_attempts)
    resources = {**scaling.custom_resources, "CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        functools.partial(monitored_train_worker, spec),  # the typed spec itself, not a string-keyed dict
        torch_config=TorchConfig(backend=None if scaling.backend == "auto" else scaling.backend),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.ray_num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=scaling.placement_strategy,
                                               elastic_resize_monitor_interval_s=scaling.resize_check_s),
        run_config=ray.train.RunConfig(
            name=training_run.name, storage_path=path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.keep_checkpoints, checkpoint_score_attribute=run.checkpoint_metric,
                checkpoint_score_order=run.checkpoint_mode),
            worker_runtime_env={"env_vars": worker_env()}, callbacks=list(callbacks) or None),
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
    already_registered: bool = False  # a rerun of a finished run: the version registered the first time

    @property
    def model_dir(self) -> str:
        """The exported model inside the final checkpoint."""
        return f"{self.checkpoint_path}/{EXPORT_DIR}"


def run_training_job(config: ConfigT, prepare: Callable[[ConfigT, TrackingTarget], TrainingPlan],
                     callbacks: Sequence[Any] = ()) -> TrainingOutcome:
    """Train, register and alias a model: the orchestration every training job shares.

    ``callbacks``: Ray Train ``UserCallback``s for the fit (a sweep's trial passes the one that reports to Tune).
    """
    target = prepare_tracking(config.tracking)
    require_shared(config.ray, config.node_read_paths(), target.tracking_uri)  # a cluster of several nodes
    plan = prepare(config, target)  # everything that can be wrong with the inputs fails here

    init_ray(config.ray)
    scaling = config.scaling
    workers_cpus = scaling.num_workers * scaling.cpus_per_worker
    check_cpu_budget({"training workers": workers_cpus, **plan.stage_cpus})
    if config.run.deterministic:  # Ray Data cuts the equal shards with tasks of 1 CPU, beside the placed workers
        check_cpu_budget({"training workers": workers_cpus, "deterministic shard split task": 1.0},
                         "lower scaling.cpus_per_worker, use fewer workers, or set run.deterministic=false")
    config_dict = config_lib.to_dict(config)
    datasets = [(summary, SPLIT_CONTEXTS.get(split, split)) for split, summary in plan.datasets.items()]
    tracker = RunTracker(target, config.tracking.outage_tolerance_s)
    training_run = open_training_run(
        target, config.run, plan.run_prefix,
        tags={"num_workers": str(scaling.world_size), "job": plan.job, **plan.tags,
              **({PARENT_RUN_TAG: config.tracking.parent_run_id} if config.tracking.parent_run_id else {})},
        config_dict=config_dict,
        params={**{f"rows_{k}": v for k, v in plan.rows.items()}, **plan.params}, dicts=plan.dicts,
        baselines=plan.baselines, datasets=datasets, tracker=tracker)
    try:
        spec = WorkerSpec(task=plan.task, optim=config.optim, scaling=scaling, config_dict=config_dict,
                          context=training_run.loop_context(target, config.run, plan.micro_batches_per_epoch))
        trainer = make_trainer(spec, scaling, config.run, training_run, plan.make_datasets(), callbacks)
        tracker.confirm_claim()  # a named run's settle wait has run while the datasets were planned
        monitor = start_system_metrics(target, training_run.mlflow_run_id, node_id="driver")
        try:
            result = trainer.fit()
        finally:
            stop_system_metrics(monitor)
    except BaseException as exc:
        # Ctrl-C: one try, no waiting; a run a rival launcher claimed meanwhile is left to it
        tracker.end_failed(quick=not isinstance(exc, Exception))
        raise
    # The model of the last epoch (the one the test metrics measure) goes to the registry.
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    request = registration_of(plan, config, training_run, result, metrics, datasets)
    with result.checkpoint.as_directory() as checkpoint_dir:
        finished = tracker.finish(request, Path(checkpoint_dir))
    registered = finished.registered
    return TrainingOutcome(run_id=training_run.mlflow_run_id, metrics={**metrics, **plan.baselines},
                           model_uri=registered.model_uri, registered_name=registered.name,
                           registered_version=registered.version, checkpoint_path=request.checkpoint,
                           run_name=training_run.name, details=plan.dicts,
                           already_registered=finished.already_registered)


def registration_of(plan: TrainingPlan, config: TrainingJobConfig, training_run: TrainingRun, result,
                    metrics: dict[str, float], datasets: list[tuple[DatasetSummary, str]]) -> Registration:
    """The end-of-run steps of a fit's result: everything they need, also when another process runs them."""
    headline = headline_metrics(plan, metrics)
    kept = [{"uri": redact_text(checkpoint_uri(checkpoint, training_run.storage_path)),
             "epoch": int(reported["epoch"]), "step": int(reported["step"]),
             "keys": sorted(k for k, v in reported.items() if isinstance(v, (int, float)))}
            for checkpoint, reported in result.best_checkpoints or [] if "epoch" in reported and "step" in reported]
    return Registration.of(
        python_model=plan.pyfunc_model, signature=plan.signature, input_example=plan.input_example,
        run_id=training_run.mlflow_run_id, run_name=training_run.name,
        checkpoint=checkpoint_uri(result.checkpoint, training_run.storage_path), step=int(metrics.get("step", 0)),
        registered_model=config.tracking.registered_model, alias=config.tracking.alias,
        version_tags=version_tags(datasets, headline, plan.baselines),
        description=training_description(plan, training_run.name, metrics, datasets), what_it_is=what_it_is(plan),
        checkpoints=kept)


def report_header(title: str, outcome: TrainingOutcome, config: TrainingJobConfig) -> None:
    """The first lines of every training job's summary: where its run, model and checkpoint are."""
    print(f"\n=== {title} ===")
    print(f"MLflow run      : {outcome.run_id} (experiment '{config.tracking.experiment}')")
    if outcome.registered_name:
        alias = ("registered before by this run; alias not moved" if outcome.already_registered
                 else f"alias @{config.tracking.alias}")
        print(f"registered model: {outcome.registered_name} version {outcome.registered_version} ({alias})")
    print(f"checkpoint      : {redact_text(outcome.checkpoint_path)}")
