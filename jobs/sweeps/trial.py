"""One trial of a sweep: the training job itself, through the one training driver, reporting each epoch to Tune.

The trial's job config is the sweep's job config, its overrides, the trial's sampled values, and what
places the trial in the sweep: its run name (``<sweep>-<trial id>``: a restored trial resumes its own
Ray Train checkpoints and MLflow run), the sweep's experiment, its parent run, and no registration
(the sweep registers the best trial once it knows which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.common import config as config_lib
from jobs.sweeps.settings import TrainingJob
from jobs.sweeps.space import overrides_for

EPOCHS_DONE = "epochs_done"  # the scheduler's clock: epochs trained, counted from 1


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """What every trial of one sweep shares; shipped to each trial's Tune actor."""
    job: TrainingJob
    config_path: str | None
    overrides: list[str] = field(default_factory=list)
    sweep_name: str
    storage_path: str  # the trials' Ray Train runs go under <storage_path>/<sweep_name>/trials
    tracking_uri: str
    experiment: str
    parent_run_id: str
    # The sweep driver's Ray Data setting (off where its output is not a terminal): a trial's job runs in a
    # Tune actor, whose output never is, and its datasets' bars would be redrawn into the sweep's log.
    ray_tqdm: bool = True

    def trial_run_name(self, trial_id: str) -> str:
        return f"{self.sweep_name}-{trial_id}"

    def job_config(self, trial_id: str, params: dict[str, Any]):
        placement = {"run.name": self.trial_run_name(trial_id),
                     "run.storage_path": f"{self.storage_path.rstrip('/')}/{self.sweep_name}/trials",
                     "tracking.tracking_uri": self.tracking_uri, "tracking.experiment": self.experiment,
                     "tracking.parent_run_id": self.parent_run_id, "tracking.registered_model": None}
        return config_lib.load(self.job.config_class, self.config_path,
                               [*self.overrides, *overrides_for(params), *overrides_for(placement)])


def tune_report_callback():
    """Ray Train's reports to Tune, each with ``epochs_done`` (the loop reports ``epoch`` from 0)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with_clock = [{**m, EPOCHS_DONE: int(m.get("epoch", -1)) + 1} for m in metrics]
            super().after_report(run_context, with_clock, checkpoint)

    return EpochReport()


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """Tune's function trainable: train the job with ``params``; Tune sees each epoch's metrics."""
    import ray.tune
    from ray.data import DataContext

    from jobs.train.driver import run_training_job

    DataContext.get_current().use_ray_tqdm = spec.ray_tqdm  # carried by the job's datasets to their actors
    trial_id = ray.tune.get_context().get_trial_id()
    config = spec.job_config(trial_id, params)
    run_training_job(config, spec.job.prepare, callbacks=[tune_report_callback()])
