"""Measure a model on a labelled file: score it through the batch pipeline, compare with the truth.

    python -m jobs.evaluate --config configs/evaluate.local-cpu.yaml \
        --set model=models:/review-sentiment@candidate --set data=data/corpus/test.parquet

The file may be any form ``prepare_corpus`` reads (CSV in any encoding, JSON Lines, Parquet;
several text columns or a sentence pair: ``input.*``). Its rows go through the same Ray Data
pipeline as ``batch_infer`` (rejected rows are counted and listed, never silently dropped),
then are joined back to their labels by id. Classifiers: accuracy, macro-F1, per-class
precision/recall/F1, the confusion matrix (table and picture), calibration (expected calibration
error, reliability plot) and, given ``train_data``, the majority and char n-gram baselines on the
same rows. Seq2seq models: token and syllable accuracy, polyphonic accuracy, exact match and,
given ``train_data``, the per-character baseline. Everything goes to one MLflow run, linked to
the model version (tags on both sides).
"""

from __future__ import annotations

import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.common.baselines import BASELINES
from jobs.evaluation.results import ClassifierResult
from jobs.evaluation.runner import EvaluateConfig, EvaluationOutcome, run
from jobs.scoring.pipeline import ScoringError


def report(outcome: EvaluationOutcome, config: EvaluateConfig) -> None:
    m, counts, resolved = outcome.metrics, outcome.counts, outcome.model.resolved
    print("\n=== evaluation finished ===")
    print(f"model           : {resolved.name} version {resolved.version} ({outcome.model.kind})")
    reasons = ", ".join(f"{k} {v}" for k, v in counts.rejected_by_reason.items())
    print(f"data            : {config.data}: {counts.rows_in} rows, {counts.rows_out} scored, "
          f"{counts.rows_rejected} rejected" + (f" ({reasons})" if reasons else ""))
    for row in outcome.rejected[:10]:
        print(f"  rejected {row['id']}: {row['reason']}")
    if len(outcome.rejected) > 10:
        print(f"  ... {len(outcome.rejected) - 10} more (MLflow artifact rejected_rows.json)")
    print(f"MLflow run      : {outcome.run_id} (experiment '{config.tracking.experiment}')")
    if m.get("rows_also_in_train_data"):
        print(f"WARNING: {m['rows_also_in_train_data']:.0f} evaluated row(s) also appear in train_data: the model "
              "has seen them (prepare_corpus with given splits removes such rows from the later split)")
    if isinstance(outcome.result, ClassifierResult):
        print("scored rows                   accuracy  macro-F1")
        print(f"  model                       {m['accuracy']:8.4f}  {m['macro_f1']:8.4f}   (ECE {m['ece']:.4f})")
        for name, title in BASELINES.items():
            if f"baseline_{name}_eval_accuracy" in m:
                print(f"  {title:<27} {m[f'baseline_{name}_eval_accuracy']:8.4f}  "
                      f"{m[f'baseline_{name}_eval_macro_f1']:8.4f}")
        print("\n".join(outcome.result.report.table()))
        if outcome.result.report.never_predicted:
            print(f"WARNING: the model never predicts {', '.join(outcome.result.report.never_predicted)}")
        return
    nan = float("nan")
    print("scored rows               syllable acc  polyphonic acc  exact match")
    print(f"  model (greedy)          {m.get('syllable_accuracy', nan):12.4f}  "
          f"{m.get('polyphonic_accuracy', nan):14.4f}  {m.get('exact_match', nan):11.4f}")
    if "baseline_char_eval_syllable_accuracy" in m:
        print(f"  per-character reading   {m['baseline_char_eval_syllable_accuracy']:12.4f}  "
              f"{m.get('baseline_char_eval_polyphonic_accuracy', nan):14.4f}  "
              f"{m['baseline_char_eval_exact_match']:11.4f}")



@cli.entry_point("evaluation", known=(ScoringError,))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(EvaluateConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    report(outcome, config)
    return 0



if __name__ == "__main__":
    sys.exit(main())
