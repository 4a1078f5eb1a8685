"""Promote a registered classifier's @candidate version to @production when it measures better.

    python -m jobs.promote --config configs/promote.local-cpu.yaml

Exit 0 when promoted, kept or already in production; 1 when something failed and nothing moved; 65
when the data is at fault (``jobs.common.cli`` lists every job's exit statuses).
``jobs.evaluation.promotion`` holds the rule (both versions evaluated on the same rows, the margin,
the baseline) and its record (one MLflow run, the candidate's ``promotion.*`` tags, @production last).
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
