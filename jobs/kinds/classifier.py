"""The classifier kind: a Hugging Face sequence classifier, one label and its probability per row."""

from __future__ import annotations

from jobs.common import labels
from jobs.common.baselines import BASELINES
from jobs.common.registry import check_max_length
from jobs.evaluation.inputs import read_classification_rows
from jobs.evaluation.results import ClassifierResult, classifier_baselines, classifier_result
from jobs.kinds import KindSpec
from jobs.scoring.predictors import ClassifierPredictor, TokenizingClassifierPredictor, tokenize_tagged
from jobs.scoring.sink import SCORED_SCHEMA


def check_scoring(settings, columns, model_dir: str) -> None:
    check_max_length(model_dir, settings.max_length, "max_length")  # a ConfigError naming the key


def check_input(model_dir: str, model_ref: str, files) -> None:
    """A labelled input's label k must be the scored label k (its readable files)."""
    labels.check_model_labels(labels.model_label_names(model_dir), model_ref, files)


def pyfunc() -> tuple:
    import pandas as pd

    from jobs.common.registry import TextClassifierModel, classifier_signature

    return TextClassifierModel(), classifier_signature(False), pd.DataFrame({"text": ["质量很好，物流也快"]})


def measure(rows, scored, train, names: list[str]) -> tuple[ClassifierResult, dict[str, float]]:
    result = classifier_result(rows, scored, names)
    return result, (classifier_baselines(train, rows, result, names) if train is not None else {})


def log_artifacts(result: ClassifierResult, names: list[str]) -> None:
    """The confusion matrix (table and picture) and calibration (reliability plot) of the active MLflow run."""
    import mlflow

    from jobs.evaluation.plots import confusion_figure, reliability_figure

    columns = {f"predicted {name}": result.confusion[:, j].tolist() for j, name in enumerate(names)}
    mlflow.log_table({"true": names, **columns}, "confusion_matrix.json")
    mlflow.log_figure(confusion_figure(result.confusion, names), "confusion_matrix.png")
    mlflow.log_figure(reliability_figure(result.calibration), "reliability.png")
    mlflow.log_dict(result.calibration.as_dict(), "calibration.json")


def report_lines(m: dict[str, float], result: ClassifierResult) -> list[str]:
    lines = ["scored rows                   accuracy  macro-F1",
             f"  model                       {m['accuracy']:8.4f}  {m['macro_f1']:8.4f}   (ECE {m['ece']:.4f})"]
    for name, title in BASELINES.items():
        if f"baseline_{name}_eval_accuracy" in m:
            lines.append(f"  {title:<27} {m[f'baseline_{name}_eval_accuracy']:8.4f}  "
                         f"{m[f'baseline_{name}_eval_macro_f1']:8.4f}")
    lines += result.report.table()
    if result.report.never_predicted:
        lines.append(f"WARNING: the model never predicts {', '.join(result.report.never_predicted)}")
    return lines


SPEC = KindSpec(
    name="classifier", scored_schema=SCORED_SCHEMA, predictor=TokenizingClassifierPredictor,
    tokenize_stage=tokenize_tagged, staged_predictor=ClassifierPredictor, reads_pairs=True,
    check_scoring=check_scoring, check_input=check_input, pyfunc=pyfunc,
    label_names=labels.model_label_names, read_rows=read_classification_rows, measure=measure,
    headline_metric="accuracy", summary_columns=("accuracy", "macro_f1", "ece"), baseline_titles=BASELINES,
    log_artifacts=log_artifacts, report_lines=report_lines)
