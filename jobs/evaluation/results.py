"""Scored rows joined back to their truth by id, and the measures taken on them.

Rows the pipeline rejected (empty text, bad bytes) have no prediction: they are counted and
listed by the job, and every measure here is taken on the scored rows only, baselines included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_pipeline.corpus import normalise_text
from data_pipeline.pinyin import ReadingTable, Scores, baseline_scores, score
from jobs.common.baselines import baseline_metrics, joined
from jobs.evaluation.inputs import EvalRows
from jobs.common.metrics import Calibration, ClassReport, calibration, class_report, confusion_matrix


def _positions(rows: EvalRows, scored: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """For each scored row: its index in ``rows`` and in ``scored`` (ids are unique in both)."""
    index = {row_id: i for i, row_id in enumerate(rows.ids)}
    scored_ids = scored.column("id").to_pylist()
    found = [(index[row_id], j) for j, row_id in enumerate(scored_ids) if row_id in index]
    if len(found) != len(scored_ids):
        raise RuntimeError(f"{len(scored_ids) - len(found)} scored row(s) have ids the input does not hold")
    pairs = np.array(found, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


@dataclass(frozen=True)
class ClassifierResult:
    rows: np.ndarray  # indices into EvalRows of the scored rows
    confusion: np.ndarray
    report: ClassReport
    calibration: Calibration

    def metrics(self) -> dict[str, float]:
        return {**self.report.as_metrics(), "ece": self.calibration.ece}


def classifier_result(rows: EvalRows, scored: pa.Table, label_names: Sequence[str]) -> ClassifierResult:
    at_rows, at_scored = _positions(rows, scored)
    truth = np.asarray(rows.labels, dtype=np.int64)[at_rows]
    predicted = np.asarray(scored.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)[at_scored]
    confidence = np.asarray(scored.column("probability").to_numpy(zero_copy_only=False), dtype=np.float64)[at_scored]
    confusion = confusion_matrix(truth, predicted, len(label_names))
    return ClassifierResult(rows=at_rows, confusion=confusion, report=class_report(confusion, label_names),
                            calibration=calibration(confidence, truth == predicted))


def classifier_baselines(train: EvalRows, rows: EvalRows, result: ClassifierResult,
                         label_names: Sequence[str]) -> dict[str, float]:
    """Majority class and char n-gram TF-IDF + LR, fitted on ``train``, on the rows the model scored."""
    texts = joined(rows.texts, rows.text_pairs)
    labels = np.asarray(rows.labels)
    return baseline_metrics(joined(train.texts, train.text_pairs), train.labels,
                            [texts[i] for i in result.rows], labels[result.rows].tolist(), label_names,
                            split="eval")


@dataclass(frozen=True)
class Seq2SeqResult:
    rows: np.ndarray
    scores: Scores

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.scores.rates().items() if not np.isnan(v)} | {"rows": float(self.scores.rows)}


def seq2seq_result(rows: EvalRows, scored: pa.Table, polyphonic: frozenset[str]) -> Seq2SeqResult:
    at_rows, at_scored = _positions(rows, scored)
    generated = scored.column("generated").to_pylist()
    scores = score([rows.texts[i] for i in at_rows], [rows.targets[i].split() for i in at_rows],
                   [(generated[j] or "").split() for j in at_scored], polyphonic)
    return Seq2SeqResult(rows=at_rows, scores=scores)


def polyphonic_characters(rows: EvalRows, train: EvalRows | None) -> frozenset[str]:
    """Characters read more than one way, in the training pairs when given, else in the evaluated ones."""
    source = train if train is not None else rows
    return ReadingTable.fit(zip(source.texts, source.targets)).polyphonic()


def seq2seq_baseline(train: EvalRows, rows: EvalRows, result: Seq2SeqResult) -> dict[str, float]:
    """The per-character reading table fitted on ``train``, on the rows the model scored."""
    pairs = [(rows.texts[i], rows.targets[i]) for i in result.rows]
    scores, _ = baseline_scores(zip(train.texts, train.targets), pairs)
    return {f"baseline_char_eval_{k}": v for k, v in scores.rates().items() if not np.isnan(v)}


def _content_keys(rows: EvalRows) -> list[tuple[str, str]]:
    pairs = rows.text_pairs if rows.text_pairs is not None else [""] * len(rows.texts)
    return [(normalise_text(text), normalise_text(pair)) for text, pair in zip(rows.texts, pairs)]


def rows_also_in_training(rows: EvalRows, train: EvalRows) -> int:
    """Evaluated rows whose (normalised) text also appears in the training file: a leak that flatters the model."""
    seen = set(_content_keys(train))
    return sum(key in seen for key in _content_keys(rows))
