"""Reference classifiers measured on the same split in the same run: the bar a model has to clear."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

BASELINES = {"majority": "majority class", "char_ngram": "char 1-3-gram TF-IDF + LR"}


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
    from jobs.evaluation.metrics import class_report, confusion_matrix

    predictions = {"majority": majority_predictions(train_labels, len(test_labels)),
                   "char_ngram": char_ngram_predictions(train_texts, train_labels, test_texts)}
    metrics = {}
    for name, predicted in predictions.items():
        report = class_report(confusion_matrix(test_labels, predicted, len(label_names)), label_names)
        metrics[f"baseline_{name}_{split}_accuracy"] = report.accuracy
        metrics[f"baseline_{name}_{split}_macro_f1"] = report.macro_f1
    return metrics


def joined(texts: Sequence[str], pairs: Sequence[str] | None) -> list[str]:
    """The baselines see a sentence pair as one text."""
    return list(texts) if pairs is None else [f"{a} {b}" for a, b in zip(texts, pairs)]
