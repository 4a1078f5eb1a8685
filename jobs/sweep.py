"""Search a training job's hyperparameters with Ray Tune; track every trial in MLflow and register the best.

    python -m jobs.sweep --config configs/sweep.finetune_classifier.local-cpu.yaml

Each trial is the training job itself (``job`` and its ``job_config``, plus the trial's values of the
``space`` keys, the same dotted names as ``--set``) through the one training driver: Ray Train DDP,
checkpoints, validation, MLflow. An ASHA scheduler stops trials that trail the others at the same
epoch. MLflow gets one parent run for the sweep and a nested child run per trial; the finished trial
with the best last validation metric is registered with ``tracking.alias``. Killed, the same command
resumes the sweep: finished trials are kept, unfinished ones resume from their own checkpoints.
Exit status: 0 when a trial finished and the best was recorded, 1 when none finished, 2 for a config error,
130 when interrupted (Ctrl-C) before its trials ended: nothing registered, and the same command resumes it.
"""

from __future__ import annotations

import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.sweeps.runner import SweepInterrupted, SweepOutcome, run_sweep
from jobs.sweeps.settings import SweepConfig


def report(outcome: SweepOutcome) -> None:
    metric = outcome.metric
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


@cli.entry_point("sweep")  # a bad space key or job config: exit 2 before any trial
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(SweepConfig, __doc__.splitlines()[0], argv)
    try:
        outcome = run_sweep(config)
    except SweepInterrupted as interrupted:
        print(f"\nsweep: {interrupted}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    report(outcome)
    return 0 if outcome.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
