"""Reference classifiers measured on the same split in the same run: the bar a model has to clear."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def majority_accuracy(train_labels: Sequence[int], test_labels: Sequence[int]) -> float:
    majority = Counter(train_labels).most_common(1)[0][0]
    return sum(label == majority for label in test_labels) / len(test_labels)


def char_ngram_accuracy(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                        test_labels: Sequence[int], ngram_range: tuple[int, int] = (1, 3)) -> float:
    """TF-IDF over character 1-3-grams with logistic regression (~85% on the review split)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=ngram_range, min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(max_iter=2000, C=4.0)
    classifier.fit(features, train_labels)
    predicted = classifier.predict(vectorizer.transform(test_texts))
    return float((predicted == list(test_labels)).mean())
