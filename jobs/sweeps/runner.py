"""Run a sweep: Ray Tune's Tuner over ``jobs.sweeps.trial.run_trial``, resumed when a sweep of the same name
was killed, then each trial recorded in MLflow and the best one registered (``jobs.sweeps.record``)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.common import config as config_lib
from jobs.common.ray_runtime import init_ray
from jobs.common.shared_storage import require_shared
from jobs.common.tracking import prepare_tracking
from jobs.sweeps.record import (TrialOutcome, best_trial, finish_parent, mark_interrupted, open_parent,
                                record_trials, register_best)
from jobs.sweeps.settings import Dimension, SchedulerSettings, SweepConfig, TrainingJob
from jobs.sweeps.space import check_space_keys, param_space
from jobs.sweeps.trial import EPOCHS_DONE, TrialSpec, run_trial

log = logging.getLogger(__name__)
STATE_INTERVAL_S = 10
# Each trial's Tune actor runs the training job's driver, which waits on its workers: it reserves memory, not
# CPU. Even 0.01 CPU would leave the job's own CPUs one short: a trial whose workers take all but one CPU
# (2 x 0.5 on 2 cores) then waits forever for the 1-CPU tasks Ray Data splits its deterministic shards with.
TRIAL_DRIVER_RESOURCES = {"memory": 256 * 2**20}


class SweepInterrupted(Exception):
    """Tune returned before every trial ended (Ctrl-C, SIGUSR1): nothing is recorded as ended, nothing
    registered; the same command resumes the sweep."""


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    registered: Any  # jobs.common.registry.RegisteredModel | None
    resumed: bool
    metric: str  # what the trials were judged by (the config's, else the job's checkpoint metric)


def concurrent_trials(cluster: dict[str, float], trial: dict[str, float], configured: int | None) -> int:
    """Trials that fit the cluster at once (CPUs and GPUs), each with its workers and Ray Data stages; at least one."""
    fits = min([math.floor((cluster.get(kind, 0.0) + 1e-9) / need) for kind, need in trial.items() if need > 0]
               or [1])
    fits = max(1, fits)
    if configured is not None and configured > fits:
        log.warning("[sweep] max_concurrent %d: only %d trial(s) of %s fit %s; running %d",
                    configured, fits, trial, {k: cluster.get(k, 0.0) for k in trial}, fits)
    return min(fits, configured) if configured is not None else fits


def scheduler_for(settings: SchedulerSettings, max_epochs: int):
    """ASHA over the epochs, never stopping a trial at its last one: that trial has trained all it will, and
    stopped there it would lose what the job does after it (its test metrics, its model, its run FINISHED)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    if settings.kind == "fifo":
        return FIFOScheduler()

    class ASHASparingLastEpoch(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get(EPOCHS_DONE, 0) >= max_epochs:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    # max_t one past the last epoch: only bounds the rungs, as no result at the last epoch reaches ASHA
    return ASHASparingLastEpoch(time_attr=EPOCHS_DONE, max_t=max_epochs + 1, grace_period=settings.grace_epochs,
                                reduction_factor=settings.reduction_factor)


def tune_sweep(spec: TrialSpec, param_space: dict[str, Any], metric: str, mode: str, num_samples: int,
               concurrency: int, scheduler, seed: int):
    """Tune's ResultGrid; a sweep of this name that was killed is restored, its finished trials kept."""
    import ray.tune
    from ray.train.constants import RAY_CHDIR_TO_TRIAL_DIR

    # Tune saves its state every few seconds at most: a killed sweep loses at most that much of its record
    # (a trial it had not yet recorded as done would run again), for one small file write.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_INTERVAL_S))
    # A trial runs where the sweep was started (or the submitted job's working dir), as a plain run of the
    # job does: Tune would chdir each trial into its own directory, where the job config's relative paths
    # (data/corpus/..., artifacts/...) name nothing. Tune copies this variable into every trial's actor.
    os.environ[RAY_CHDIR_TO_TRIAL_DIR] = "0"
    trainable = ray.tune.with_parameters(run_trial, spec=spec)
    # The trial's function is a driver: its training workers and data stages reserve the CPUs (Tune
    # refuses an empty request, and would reserve a whole CPU by default).
    trainable = ray.tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES)
    path = str(Path(spec.storage_path) / spec.sweep_name) if "://" not in spec.storage_path \
        else f"{spec.storage_path.rstrip('/')}/{spec.sweep_name}"
    if ray.tune.Tuner.can_restore(path):
        log.info("[sweep] resuming %s: finished trials are kept, unfinished ones resume", path)
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                       resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        from ray.tune.search import BasicVariantGenerator

        tuner = ray.tune.Tuner(
            trainable, param_space=param_space,
            # The generator itself caps the trials at once: Tune ignores max_concurrent_trials beside it.
            tune_config=ray.tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples, scheduler=scheduler,
                                            search_alg=BasicVariantGenerator(random_state=seed,
                                                                             max_concurrent=concurrency)),
            run_config=ray.tune.RunConfig(name=spec.sweep_name, storage_path=spec.storage_path,
                                          failure_config=ray.tune.FailureConfig(max_failures=0),
                                          verbose=1))
    return tuner.fit()


def unended_trials(results) -> list[str]:
    """Trials an interrupted Tune left running or pending, as its state saved at the interruption says.

    A sweep that ran through ends each trial TERMINATED (finished, or stopped by the scheduler) or
    ERROR. Interrupted, Tune saves its state, then stops the running trials and marks them TERMINATED
    in memory too: only the state it saved tells them from trials a scheduler stopped.
    """
    import ray.tune

    saved = ray.tune.ExperimentAnalysis(results.experiment_path).trials
    return sorted(t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR"))


def outcomes_of(results, metric: str, space: dict[str, Dimension]) -> list[TrialOutcome]:
    """Each trial as Tune ended it: ``failed`` (it raised) or ``ended``, which ``record_trials`` tells apart
    from the child run: FINISHED is a job that trained to its end, anything else a trial the scheduler stopped."""
    # ResultGrid keeps its trials in the same order as its results; Result itself has no trial id.
    trials = results._experiment_analysis.trials
    outcomes = []
    for trial, result in zip(trials, results):
        metrics = result.metrics or {}
        value, reported = metrics.get(metric), metrics.get("timestamp")  # Tune's: seconds since the epoch
        params = {k: v.item() if hasattr(v, "item") else v for k, v in (trial.config or {}).items() if k in space}
        outcomes.append(TrialOutcome(
            trial_id=trial.trial_id, params=params, state="failed" if result.error is not None else "ended",
            metric=float(value) if isinstance(value, (int, float)) else None,
            epochs=int(metrics.get(EPOCHS_DONE, 0) or 0), run_id=None,
            error=None if result.error is None else str(result.error),
            reported_ms=int(reported * 1000) if isinstance(reported, (int, float)) else None))
    return sorted(outcomes, key=lambda o: o.trial_id)


def training_job(name: str) -> TrainingJob:
    """The training jobs a sweep can run (imported when asked: each pulls in its model code)."""
    if name == "finetune_classifier":
        from jobs.train import classifier

        return TrainingJob(name, classifier.FinetuneConfig, classifier.prepare)
    from jobs.train import seq2seq

    return TrainingJob(name, seq2seq.Seq2SeqTrainConfig, seq2seq.prepare)


def trial_resources(job_config) -> dict[str, float]:
    """What one trial reserves: its training workers, and its Ray Data read and tokenize stages."""
    stages, scaling = job_config.data.stages, job_config.scaling
    workers = max(scaling.num_workers, 1)
    data_cpus = stages.read_cpus + stages.tokenize_cpus * stages.tokenize_concurrency
    return {"CPU": workers * scaling.cpus_per_worker + data_cpus,
            "GPU": workers * scaling.gpus_per_worker if scaling.use_gpu else 0.0}


def run_sweep(config: SweepConfig) -> SweepOutcome:
    import ray
    from ray.data import DataContext

    if not config.space:
        raise config_lib.ConfigError("space: name at least one key to search, e.g. "
                                     "--set 'space={optim.lr: {kind: loguniform, low: 1.0e-4, high: 1.0e-3}}'")
    job = training_job(config.job)
    job_config_path = str(Path(config.job_config).resolve()) if config.job_config else None
    base = config_lib.load(job.config_class, job_config_path, config.job_overrides)  # the job's own checks
    check_space_keys(job.config_class, config.space, lambda cls, path, overrides: config_lib.load(
        cls, job_config_path, [*config.job_overrides, *overrides]))
    metric = config.metric or base.run.checkpoint_metric
    mode = config.mode or base.run.checkpoint_mode
    storage = config.storage_path if "://" in config.storage_path else str(Path(config.storage_path).resolve())
    target = prepare_tracking(config.tracking)
    require_shared(config.ray, {"storage_path": storage, **base.node_read_paths()}, target.tracking_uri)
    init_ray(config.ray, serve_state_api=True)  # a stopped trial's CPUs handed back (ray_runtime)
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
                     parent_run_id=parent, ray_tqdm=DataContext.get_current().use_ray_tqdm)
    results = tune_sweep(spec, param_space(config.space), metric, mode, config.num_samples, concurrency,
                         scheduler_for(config.scheduler, base.optim.epochs), config.seed)
    unended = unended_trials(results)
    if unended:
        mark_interrupted(target, parent, unended)
        raise SweepInterrupted(f"sweep {name} was interrupted before trial(s) {', '.join(unended)} ended: none "
                               "recorded as ended, nothing registered; the same command resumes it")
    outcomes = outcomes_of(results, metric, config.space)
    outcomes = record_trials(target, parent, outcomes, {o.trial_id: spec.trial_run_name(o.trial_id) for o in outcomes})
    best = best_trial(outcomes, mode)
    registered_name = config.tracking.registered_model or base.tracking.registered_model
    registered = register_best(target, best, parent, registered_name, config.tracking.alias) \
        if best is not None and registered_name else None
    header = (f"**sweep** `{name}` over `{config.job}` (`{config.job_config}`): {metric} ({mode}), "
              f"{config.scheduler.kind} scheduler, {concurrency} trial(s) at once.")
    finish_parent(target, parent, outcomes, config.space, metric, mode, best, registered, header)
    return SweepOutcome(parent, outcomes, best, registered, resumed, metric)
