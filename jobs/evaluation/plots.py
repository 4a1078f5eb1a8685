"""Pictures of an evaluation for the MLflow run page: the confusion matrix and a reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jobs.common.metrics import Calibration


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(confusion: np.ndarray, label_names: Sequence[str]):
    """Counts, with each cell shaded by its share of the true class (row-normalised)."""
    plt = _pyplot()
    n = len(label_names)
    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 2))
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(n), labels=label_names, rotation=45, ha="right")
    axes.set_yticks(range(n), labels=label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            axes.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                      color="white" if share[i, j] > 0.5 else "black")
    axes.set_title("confusion matrix (shade: share of the true class)")
    figure.tight_layout()
    return figure


def reliability_figure(result: Calibration):
    """Accuracy against mean confidence per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    centers = (result.bin_edges[:-1] + result.bin_edges[1:]) / 2
    filled = result.bin_rows > 0
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.bar(centers[filled], result.bin_accuracy[filled], width=result.bin_edges[1] - result.bin_edges[0],
             edgecolor="black", alpha=0.7, label="accuracy in bin")
    axes.plot(result.bin_confidence[filled], result.bin_accuracy[filled], marker="o", color="darkred",
              label="mean confidence")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (predicted class probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability (ECE {result.ece:.3f})")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure
