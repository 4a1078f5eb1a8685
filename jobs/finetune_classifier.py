"""Fine-tune a BERT-style classifier (MiniRBT-H256 by default) with Ray Train DDP.

    python -m jobs.finetune_classifier --config configs/finetune_classifier.local-cpu.yaml

``jobs.train.classifier`` is the job's config and its task; ``jobs.train.driver`` does the rest. ``prepare``
validates the Parquet splits and measures two baselines on the driver; ``ClassifierTask`` is the
model-specific part of the loop inside each worker. The trained model is logged, registered and
aliased in MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.train.classifier import FinetuneConfig, baselines_sampled, per_class_on_test, run
from jobs.train.driver import TrainingOutcome, report_header
from jobs.train.run_claim import RunNameTaken
from jobs.train.run_tracking import TrackingIncomplete


def report(outcome: TrainingOutcome, config: FinetuneConfig) -> None:
    from jobs.common.baselines import BASELINES

    m = outcome.metrics
    report_header("fine-tuning finished", outcome, config)
    print("label counts     : " + "; ".join(f"{split} " + ", ".join(f"{k}={v}" for k, v in counts.items())
                                            for split, counts in outcome.details["label_counts.json"].items()))
    print("test split, same run        accuracy  macro-F1")
    print(f"  model                      {m['test_accuracy']:8.4f}  {m['test_macro_f1']:8.4f}")
    for name, title in BASELINES.items():
        if f"baseline_{name}_test_accuracy" in m:
            accuracy, macro_f1 = m[f"baseline_{name}_test_accuracy"], m[f"baseline_{name}_test_macro_f1"]
            print(f"  {title:<26} {accuracy:8.4f}  {macro_f1:8.4f}")
    sample = outcome.details.get("baseline_rows.json")
    if sample and baselines_sampled(sample):
        print(f"  (baselines on a sample: {sample['train_rows_used']:,} of {sample['train_rows']:,} train rows, "
              f"{sample['test_rows_used']:,} of {sample['test_rows']:,} test rows, seed {sample['seed']})")
    scores = per_class_on_test(outcome)
    print("test split, per class:")
    print("\n".join(scores.table()))
    if scores.never_predicted:
        print(f"WARNING: the model never predicts {', '.join(scores.never_predicted)} on the test split "
              "(try optim.class_weights=balanced and run.checkpoint_metric=val_macro_f1)")



class _ResumeFrom(argparse.Action):
    """``--resume-from REF`` is ``--set model.warm_start=REF`` in its place among the --set flags, so that
    --print-config shows it; REF goes as a JSON string (valid YAML), never read as a number or a list."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        namespace.overrides = [*namespace.overrides, f"model.warm_start={json.dumps(value, ensure_ascii=False)}"]



def _resume_flag(parser) -> None:
    parser.add_argument("--resume-from", metavar="REF", action=_ResumeFrom, help="warm-start from a checkpoint "
                        "directory, an MLflow run id, runs:/ or models:/ URI (same as --set model.warm_start=REF)")



@cli.entry_point("fine-tuning", known=(RunNameTaken,), later=(TrackingIncomplete,))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(FinetuneConfig, __doc__.splitlines()[0], argv, extra=_resume_flag)
    outcome = run(config)
    report(outcome, config)
    return 0



if __name__ == "__main__":
    sys.exit(main())
