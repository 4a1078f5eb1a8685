"""Reference classifiers measured on the same split in the same run: the bar a model has to clear.

They run on the driver, in its memory: a split of more than ``BASELINE_MAX_ROWS`` rows is measured
on a uniform sample of that many rows (a fixed seed), read a batch at a time, and the run says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from data_pipeline.paths import ParquetFiles

BASELINES = {"majority": "majority class", "char_ngram": "char 1-3-gram TF-IDF + LR"}
# TF-IDF + logistic regression over 200k reviews takes ~1 GB and a few minutes on the driver.
BASELINE_MAX_ROWS = 200_000


def sample_indices(total: int, max_rows: int, seed: int) -> np.ndarray | None:
    """Sorted row numbers of a uniform sample of ``max_rows`` of ``total`` rows; None when all fit."""
    if total <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=max_rows, replace=False))


def read_sample(files: ParquetFiles, columns: list[str], max_rows: int, seed: int,
                batch_rows: int = 65_536) -> tuple[dict[str, list], int]:
    """``columns`` of at most ``max_rows`` rows of the files (all of them, or a sample in file order),
    and the files' total rows. Only one batch of ``batch_rows`` rows beyond the sample is in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    totals = []
    for path in files.paths:
        with files.filesystem.open_input_file(path) as handle:
            totals.append(pq.ParquetFile(handle).metadata.num_rows)
    keep = sample_indices(sum(totals), max_rows, seed)
    out: dict[str, list] = {name: [] for name in columns}
    offset = 0
    for path in files.paths:
        with files.filesystem.open_input_file(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
                start, offset = offset, offset + batch.num_rows
                if keep is not None:
                    low, high = np.searchsorted(keep, [start, offset])
                    batch = batch.take(pa.array(keep[low:high] - start))
                for name in columns:
                    out[name].extend(batch.column(name).to_pylist())
    return out, sum(totals)


def majority_predictions(train_labels: Sequence[int], n_rows: int) -> np.ndarray:
    majority = Counter(train_labels).most_common(1)[0][0]
    return np.full(n_rows, majority, dtype=np.int64)


def char_ngram_predictions(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                           ngram_range: tuple[int, int] = (1, 3)) -> np.ndarray:
    """TF-IDF over character 1-3-grams with logistic regression (~85% on the review split)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=ngram_range, min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(max_iter=2000, C=4.0)
    classifier.fit(features, train_labels)
    return np.asarray(classifier.predict(vectorizer.transform(test_texts)), dtype=np.int64)


def baseline_metrics(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                     test_labels: Sequence[int], label_names: Sequence[str], split: str = "test") -> dict[str, float]:
    """``baseline_<name>_<split>_accuracy`` and ``..._macro_f1`` of each reference classifier."""
    from jobs.common.metrics import class_counts, class_report_from_counts

    predictions = {"majority": majority_predictions(train_labels, len(test_labels)),
                   "char_ngram": char_ngram_predictions(train_texts, train_labels, test_texts)}
    metrics = {}
    for name, predicted in predictions.items():
        report = class_report_from_counts(**class_counts(test_labels, predicted, len(label_names)),
                                          label_names=label_names)
        metrics[f"baseline_{name}_{split}_accuracy"] = report.accuracy
        metrics[f"baseline_{name}_{split}_macro_f1"] = report.macro_f1
    return metrics


def joined(texts: Sequence[str], pairs: Sequence[str] | None) -> list[str]:
    """The baselines see a sentence pair as one text."""
    return list(texts) if pairs is None else [f"{a} {b}" for a, b in zip(texts, pairs)]
