"""Classification metrics from a confusion matrix, and calibration from predicted probabilities.

Pure numpy: the training loop all-reduces per-class counts (true positives, predictions, support:
three vectors of n, where a confusion matrix would be n x n per batch) and calls
``class_report_from_counts``; the evaluation job builds a confusion matrix once from scored rows.
Per-class metric keys carry the label name, made safe for MLflow (``f1_体育``, ``recall_sports``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_pipeline.schema import metric_key

def confusion_matrix(true: Sequence[int], predicted: Sequence[int], n_labels: int) -> np.ndarray:
    """(n_labels, n_labels) counts, rows the true label and columns the predicted one."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(true * n_labels + predicted, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


@dataclass(frozen=True)
class ClassScores:
    name: str
    precision: float
    recall: float
    f1: float
    support: int  # true rows of the class
    predicted: int  # rows predicted as the class


@dataclass(frozen=True)
class ClassReport:
    rows: int
    accuracy: float
    macro_f1: float
    classes: tuple[ClassScores, ...]

    @property
    def never_predicted(self) -> list[str]:
        """Classes present in the data that the model never predicts: the imbalance failure to flag."""
        return [c.name for c in self.classes if c.predicted == 0 and c.support > 0]

    def as_metrics(self) -> dict[str, float]:
        metrics = {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "rows": float(self.rows)}
        for c in self.classes:
            key = metric_key(c.name)
            metrics.update({f"precision_{key}": c.precision, f"recall_{key}": c.recall, f"f1_{key}": c.f1,
                            f"predicted_{key}": float(c.predicted)})
        return metrics

    def table(self) -> list[str]:
        width = max([len("class")] + [len(c.name) for c in self.classes])
        lines = [f"  {'class':<{width}}  precision  recall      f1  support  predicted"]
        lines += [f"  {c.name:<{width}}  {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:6.4f}  {c.support:7d}  "
                  f"{c.predicted:9d}" for c in self.classes]
        return lines


def class_counts(true: Sequence[int], predicted: Sequence[int], n_labels: int) -> dict[str, np.ndarray]:
    """``true_positive``, ``predicted`` and ``support`` per class: what ``class_report`` needs, in O(n_labels)."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return {"true_positive": np.bincount(true[true == predicted], minlength=n_labels),
            "predicted": np.bincount(predicted, minlength=n_labels), "support": np.bincount(true, minlength=n_labels)}


def class_report(confusion: np.ndarray, label_names: Sequence[str]) -> ClassReport:
    confusion = np.asarray(confusion, dtype=np.float64)
    return class_report_from_counts(np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1), label_names)


def class_report_from_counts(true_positive, predicted, support, label_names: Sequence[str]) -> ClassReport:
    """Per-class precision/recall/F1 from true positives, predictions and true rows per class (n each)."""
    true_pos, predicted, support = (np.asarray(v, dtype=np.float64) for v in (true_positive, predicted, support))
    rows = int(support.sum())
    precision = true_pos / np.maximum(predicted, 1)
    recall = true_pos / np.maximum(support, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    classes = tuple(ClassScores(str(name), float(p), float(r), float(f), int(s), int(n))
                    for name, p, r, f, s, n in zip(label_names, precision, recall, f1, support, predicted))
    return ClassReport(rows=rows, accuracy=float(true_pos.sum() / max(rows, 1)), macro_f1=float(f1.mean()),
                       classes=classes)


@dataclass(frozen=True)
class Calibration:
    """Expected calibration error over equal-width confidence bins, and the bins for a reliability plot."""
    ece: float
    bin_edges: np.ndarray  # (bins + 1,)
    bin_confidence: np.ndarray  # mean confidence per bin (NaN where empty)
    bin_accuracy: np.ndarray  # accuracy per bin (NaN where empty)
    bin_rows: np.ndarray

    def as_dict(self) -> dict:
        """JSON-ready: empty bins' accuracy and confidence as null."""
        def listed(values: np.ndarray) -> list:
            return [None if np.isnan(v) else float(v) for v in values]
        return {"ece": self.ece, "bin_edges": self.bin_edges.tolist(), "bin_rows": self.bin_rows.tolist(),
                "bin_accuracy": listed(self.bin_accuracy), "bin_confidence": listed(self.bin_confidence)}


def calibration(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> Calibration:
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # (0, 0.1] -> bin 0 ...
    rows = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / rows
        accuracy = np.bincount(index, weights=correct, minlength=bins) / rows
    filled = rows > 0
    ece = float(np.sum(rows[filled] / max(len(confidence), 1)
                       * np.abs(accuracy[filled] - mean_confidence[filled])))
    return Calibration(ece=ece, bin_edges=edges, bin_confidence=mean_confidence, bin_accuracy=accuracy,
                       bin_rows=rows)
