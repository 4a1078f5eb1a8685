"""Search a training job's hyperparameters with Ray Tune; track every trial in MLflow and register the best.

    python -m jobs.sweep --config configs/sweep.finetune_classifier.local-cpu.yaml

Each trial is the training job itself (``job`` and its ``job_config``, plus the trial's values of the
``space`` keys, the same dotted names as ``--set``) through the one training driver: Ray Train DDP,
checkpoints, validation, MLflow. An ASHA scheduler stops trials that trail the others at the same
epoch. MLflow gets one parent run for the sweep and a nested child run per trial; the finished trial
with the best last validation metric is registered with ``tracking.alias``. Killed, the same command
resumes the sweep: finished trials are kept, unfinished ones resume from their own checkpoints.
Exit status: 0 when a trial finished and the best was recorded, 1 when none finished, 2 for a config error.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from jobs import finetune_classifier, train_seq2seq
from jobs.common import config as config_lib
from jobs.common.ray_runtime import RayConfig, init_ray
from jobs.common.shared_storage import require_shared
from jobs.common.tracking import TrackingConfig, prepare_tracking
from jobs.sweeps.record import best_trial, finish_parent, open_parent, record_trials, register_best
from jobs.sweeps.runner import SweepOutcome, concurrent_trials, outcomes_of, scheduler_for, tune_sweep
from jobs.sweeps.settings import Dimension, SchedulerSettings, TrainingJob
from jobs.sweeps.space import check_space_keys, param_space
from jobs.sweeps.trial import TrialSpec

TRAINING_JOBS = {
    "finetune_classifier": TrainingJob("finetune_classifier", finetune_classifier.FinetuneConfig,
                                       finetune_classifier.prepare),
    "train_seq2seq": TrainingJob("train_seq2seq", train_seq2seq.Seq2SeqTrainConfig, train_seq2seq.prepare),
}


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


def trial_resources(job_config) -> dict[str, float]:
    """What one trial reserves: its training workers, and its Ray Data read and tokenize stages."""
    stages, scaling = job_config.data.stages, job_config.scaling
    workers = max(scaling.num_workers, 1)
    data_cpus = stages.read_cpus + stages.tokenize_cpus * stages.tokenize_concurrency
    return {"CPU": workers * scaling.cpus_per_worker + data_cpus,
            "GPU": workers * scaling.gpus_per_worker if scaling.use_gpu else 0.0}


def run(config: SweepConfig) -> SweepOutcome:
    import ray

    if not config.space:
        raise config_lib.ConfigError("space: name at least one key to search, e.g. "
                                     "--set 'space={optim.lr: {kind: loguniform, low: 1.0e-4, high: 1.0e-3}}'")
    job = TRAINING_JOBS[config.job]
    job_config_path = str(Path(config.job_config).resolve()) if config.job_config else None
    base = config_lib.load(job.config_class, job_config_path, config.job_overrides)  # the job's own checks
    check_space_keys(job.config_class, config.space, lambda cls, path, overrides: config_lib.load(
        cls, job_config_path, [*config.job_overrides, *overrides]))
    metric = config.metric or base.run.checkpoint_metric
    mode = config.mode or base.run.checkpoint_mode
    storage = config.storage_path if "://" in config.storage_path else str(Path(config.storage_path).resolve())
    target = prepare_tracking(config.tracking)
    require_shared(config.ray, {"storage_path": storage, **base.node_read_paths()}, target.tracking_uri)
    init_ray(config.ray)
    concurrency = concurrent_trials(ray.cluster_resources(), trial_resources(base), config.max_concurrent)
    name = config.sweep_name()
    grid = any(d.kind == "grid" for d in config.space.values())
    params = {"job": config.job, "job_config": config.job_config or "", "metric": metric, "mode": mode,
              "num_samples": config.num_samples, "max_concurrent": concurrency, "seed": config.seed,
              "search": "grid + random" if grid else "random", "scheduler": config.scheduler.kind,
              "scheduler_grace_epochs": config.scheduler.grace_epochs,
              "scheduler_reduction_factor": config.scheduler.reduction_factor, "max_epochs": base.optim.epochs,
              **{f"space.{k}": json.dumps(config_lib.to_dict(v)) for k, v in config.space.items()}}
    parent, resumed = open_parent(target, name, params, {k: config_lib.to_dict(v) for k, v in config.space.items()})
    print(f"sweep {name}: MLflow run {parent}{' (resumed)' if resumed else ''}; {concurrency} trial(s) at once",
          flush=True)
    spec = TrialSpec(job=job, config_path=job_config_path, overrides=list(config.job_overrides), sweep_name=name,
                     storage_path=storage, tracking_uri=target.tracking_uri, experiment=config.tracking.experiment,
                     parent_run_id=parent)
    results = tune_sweep(spec, param_space(config.space), metric, mode, config.num_samples, concurrency,
                         scheduler_for(config.scheduler, base.optim.epochs), config.seed)
    outcomes = outcomes_of(results, metric, config.space)
    outcomes = record_trials(target, parent, outcomes, {o.trial_id: spec.trial_run_name(o.trial_id) for o in outcomes})
    best = best_trial(outcomes, mode)
    registered_name = config.tracking.registered_model or base.tracking.registered_model
    registered = register_best(target, best, parent, registered_name, config.tracking.alias) \
        if best is not None and registered_name else None
    header = (f"**sweep** `{name}` over `{config.job}` (`{config.job_config}`): {metric} ({mode}), "
              f"{config.scheduler.kind} scheduler, {concurrency} trial(s) at once.")
    finish_parent(target, parent, outcomes, config.space, metric, mode, best, registered, header)
    return SweepOutcome(parent, outcomes, best, registered, resumed)


def report(outcome: SweepOutcome, metric: str) -> None:
    print(f"\n=== sweep: MLflow run {outcome.parent_run_id} ===")
    for trial in outcome.trials:
        value = "-" if trial.metric is None else f"{trial.metric:.4f}"
        print(f"  {trial.trial_id}  {trial.state:<13} epochs {trial.epochs}  {metric} {value}  {trial.params}")
    if outcome.best is None:
        print("no trial finished: nothing registered")
        return
    print(f"best: {outcome.best.trial_id} ({metric} {outcome.best.metric:.4f}), run {outcome.best.run_id}")
    if outcome.registered is not None:
        print(f"registered model: {outcome.registered.name} version {outcome.registered.version}"
              + (f" (alias @{outcome.registered.alias})" if outcome.registered.alias else ""))


def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(SweepConfig, __doc__.splitlines()[0], argv)
    try:
        outcome = run(config)
    except config_lib.ConfigError as exc:  # the job's config, its overrides or the space: before any trial
        print(f"error: {exc}", file=sys.stderr)
        return 2
    job_config = config_lib.load(TRAINING_JOBS[config.job].config_class, config.job_config, config.job_overrides)
    report(outcome, config.metric or job_config.run.checkpoint_metric)
    return 0 if outcome.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
