"""Measure a model on a labelled file: score it through the batch pipeline, compare with the truth.

    python -m jobs.evaluate --config configs/evaluate.local-cpu.yaml \
        --set model=models:/review-sentiment@candidate --set input.path=data/corpus/test.parquet

The file may be any form ``prepare_corpus`` reads (``input.*``). ``jobs.evaluation.runner`` says
what is measured (per model kind: ``jobs.kinds``) and what goes to the one MLflow run, linked to
the model version.
"""


from __future__ import annotations

import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.evaluation.runner import EvaluateConfig, EvaluationOutcome, run
from jobs.kinds import kind_spec
from jobs.scoring.pipeline import ScoringError


def report(outcome: EvaluationOutcome, config: EvaluateConfig) -> None:
    m, counts, resolved = outcome.metrics, outcome.counts, outcome.model.resolved
    print("\n=== evaluation finished ===")
    print(f"model           : {resolved.name} version {resolved.version} ({outcome.model.kind})")
    reasons = ", ".join(f"{k} {v}" for k, v in counts.rejected_by_reason.items())
    print(f"data            : {config.input.path}: {counts.rows_in} rows, {counts.rows_out} scored, "
          f"{counts.rows_rejected} rejected" + (f" ({reasons})" if reasons else ""))
    for row in outcome.rejected[:10]:
        print(f"  rejected {row['id']}: {row['reason']}")
    if len(outcome.rejected) > 10:
        print(f"  ... {len(outcome.rejected) - 10} more (MLflow artifact rejected_rows.json)")
    print(f"MLflow run      : {outcome.run_id} (experiment '{config.tracking.experiment}')")
    if m.get("rows_also_in_train_data"):
        print(f"WARNING: {m['rows_also_in_train_data']:.0f} evaluated row(s) also appear in input.train_path: the "
              "model has seen them (prepare_corpus with given splits removes such rows from the later split)")
    print("\n".join(kind_spec(outcome.model.kind).report_lines(m, outcome.result)))


@cli.entry_point("evaluation", known=(ScoringError,))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(EvaluateConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    report(outcome, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
