"""Promote a registered classifier's @candidate version to @production when it measures better.

    python -m jobs.promote --config configs/promote.local-cpu.yaml

Both versions go through the evaluation job (``jobs.evaluate``: the batch-scoring pipeline, one
MLflow run each) on the same labelled file, and the char n-gram baseline is fitted on
``train_data`` and measured on the same rows. The candidate is promoted only when its ``metric``
beats production's by more than ``margin`` and (``require_beat_baseline``) beats the baseline;
with no @production yet, the baseline alone is the bar. Only then does @production move.
Either way one MLflow run (experiment ``promote``) records the decision, the reason, both
versions' metrics, the baseline and the data digest, and the candidate version carries
``promotion.*`` tags. @production moves last, once all of that is written: a failure before it
moves nothing (the run ends FAILED and its tags say so). Exit 0 when promoted, kept or already in
production; 1 when something failed (no @candidate, an evaluation failed, the evaluations
disagree on the data, MLflow refused a write) and nothing moved; 65 when the data is at fault
(``jobs.common.cli`` lists every job's exit statuses). ``jobs.evaluation.promotion`` holds the rule
and its record.
"""

from __future__ import annotations

import sys

from mlflow.exceptions import MlflowException

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.evaluation.promotion import PromoteConfig, PromotionError, PromotionOutcome, run, summary_lines
from jobs.scoring.pipeline import ScoringError


def report(outcome: PromotionOutcome, config: PromoteConfig) -> None:
    print("\n=== promotion finished ===")
    print("\n".join(summary_lines(outcome, config)))
    print(f"MLflow run : {outcome.run_id} (experiment '{config.tracking.experiment}')")



@cli.entry_point("promotion", known=(PromotionError, ScoringError, MlflowException))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(PromoteConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    report(outcome, config)
    return 0



if __name__ == "__main__":
    sys.exit(main())
