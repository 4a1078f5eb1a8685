"""The classifier training task: a BERT-style classifier (MiniRBT-H256 by default) fine-tuned with Ray Train DDP.

This module is the job's config (``FinetuneConfig``) and its task; ``jobs.finetune_classifier`` is its
command line and ``jobs.train.driver`` does the rest. ``prepare`` validates the Parquet splits and
measures two baselines on the driver; ``ClassifierTask`` is the model-specific part of the loop inside
each worker. The trained model is logged, registered and aliased in MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from data_pipeline.batching import iterate_shard
from data_pipeline.corpus_manifest import check_corpus_files
from data_pipeline.errors import InputDataError
from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.ray_stages import StageResources, read_parquet, tokenized
from data_pipeline.schema import classification_spec
from data_pipeline.tokenization import PadCollate
from data_pipeline.validation import validate_files
from jobs.common.labels import agreed_label_names
from jobs.common.shared_storage import local_model_dir
from jobs.common.tracking import TrackingConfig, TrackingTarget
from jobs.common.metrics import ClassReport, ClassScores, class_report_from_counts, metric_key
from jobs.train.checkpoint import EXPORT_DIR
from jobs.train.driver import TrainingOutcome, run_training_job
from jobs.train.settings import OptimSettings, RunSettings, TrainingJobConfig
from jobs.train.task import TrainingPlan, require_rows

SPLITS = ("train", "val", "test")
PAIR_COLUMN = "text_pair"  # the second text of a sentence-pair corpus (prepare_corpus writes it)


@dataclass(frozen=True, kw_only=True)
class ClassifierData:
    """The corpus splits (Parquet, as prepare_corpus writes them) and how they are tokenized."""
    train: str = "data/corpus/train.parquet"  # Parquet: a file, a directory or a glob, local or s3://
    val: str = "data/corpus/val.parquet"  # measured after every epoch (run.checkpoint_metric)
    test: str = "data/corpus/test.parquet"  # measured once, with the model of the last epoch
    text_column: str = "text"  # a text_pair column beside it makes sentence pairs
    max_length: int = 128  # tokens; longer texts (or text pairs, from the end of the longer one) are truncated
    # The baselines run on the driver: a bigger train or test split is measured on a sample of this many
    # rows (seed optim.seed), logged as the param baseline_sample_rows.
    baseline_max_rows: int = 200_000
    stages: StageResources = field(default_factory=StageResources)


@dataclass(frozen=True, kw_only=True)
class ClassifierModel:
    """The pretrained model fine-tuning starts from."""
    # A hub id (hfl/minirbt-h256, where the hub is reachable) or a local save_pretrained directory;
    # `python -m jobs.init_offline_model` writes the default one.
    name_or_path: str = "artifacts/minirbt-h256-random"
    # Warm start (--resume-from): an earlier checkpoint directory, run id, runs:/ or models:/ URI.
    # Its weights and tokenizer replace name_or_path; optimiser and schedule start fresh.
    warm_start: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClassifierOptim(OptimSettings):
    # balanced: each class's loss weighted by n_rows / (n_classes * its rows in the training split),
    # so a small class is not ignored; pair it with run.checkpoint_metric: val_macro_f1.
    class_weights: Literal["none", "balanced"] = "none"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainingJobConfig):
    EXAMPLE_OVERRIDE: ClassVar[str] = "optim.lr=3e-4"  # --help's --set example (a unit test loads it)
    data: ClassifierData = field(default_factory=ClassifierData)
    model: ClassifierModel = field(default_factory=ClassifierModel)
    optim: ClassifierOptim = field(default_factory=lambda: ClassifierOptim(lr=1e-4))
    run: RunSettings = field(default_factory=lambda: RunSettings(checkpoint_metric="val_accuracy",
                                                                 checkpoint_mode="max"))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="finetune-classifier", registered_model="review-sentiment"))

    def node_read_paths(self) -> dict[str, str | None]:
        return {**super().node_read_paths(), "data.train": self.data.train, "data.val": self.data.val,
                "data.test": self.data.test, "model.name_or_path": local_model_dir(self.model.name_or_path),
                "model.warm_start": local_model_dir(self.model.warm_start)}


class ClassifierTask:
    """The classifier's part of the shared training loop (runs inside each Ray Train worker)."""

    primary_metric = "accuracy"
    headline_metrics = ("loss", "accuracy", "macro_f1")

    def __init__(self, model_path: str, label_names: list[str], optim: OptimSettings, pad_id: int,
                 class_weights: list[float] | None = None):
        self.model_path = model_path
        self.label_names = label_names
        self.optim = optim
        self.pad_id = pad_id
        self.class_weights = class_weights

    def build_model(self) -> torch.nn.Module:
        from model.classifier import load_classifier

        return load_classifier(self.model_path, self.label_names).model

    def batches(self, split: str, epoch: int, seed: int, shuffle: bool):
        import ray.train

        return iterate_shard(ray.train.get_dataset_shard(split), self.optim.batch_size,
                             PadCollate(self.pad_id, keep_ids=split == "train"), seed, epoch, shuffle,
                             self.optim.shuffle_buffer_rows, self.optim.length_grouping if shuffle else 0)

    @staticmethod
    def _logits(model, batch, device):
        token_types = batch.get("token_type_ids")
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     token_type_ids=None if token_types is None else token_types.to(device)).logits

    def train_loss(self, model, batch):
        device = next(model.parameters()).device
        logits = self._logits(model, batch, device)
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, device=device)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"].to(device), weight=weight)
        return loss, int(logits.shape[0]), batch["attention_mask"].to(device).sum()

    def eval_sums(self, model, batch):
        device = next(model.parameters()).device
        labels = batch["labels"].to(device)
        logits = self._logits(model, batch, device).float()
        n = len(self.label_names)
        predicted = logits.argmax(dim=-1)
        # Per-class counts, (n,) each: a confusion matrix would be n x n per batch, summed and all-reduced.
        return {"loss_sum": torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                "true_positive": torch.bincount(labels[predicted == labels], minlength=n),
                "predicted": torch.bincount(predicted, minlength=n), "support": torch.bincount(labels, minlength=n)}

    def zero_eval_sums(self):
        n = len(self.label_names)
        return {"loss_sum": torch.zeros(()), **{key: torch.zeros(n, dtype=torch.long)
                                                 for key in ("true_positive", "predicted", "support")}}

    def eval_metrics(self, sums):
        report = class_report_from_counts(sums["true_positive"].numpy(), sums["predicted"].numpy(),
                                          sums["support"].numpy(), self.label_names)
        return {"loss": float(sums["loss_sum"]) / max(report.rows, 1), **report.as_metrics()}

    def export(self, model, directory: Path) -> None:
        from transformers import AutoTokenizer

        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(self.model_path).save_pretrained(directory)


def _resolve_model_path(name_or_path: str) -> str:
    """Local directories become absolute (workers run elsewhere); anything else is a hub id."""
    if os.path.isdir(name_or_path):
        return str(Path(name_or_path).resolve())
    if name_or_path.startswith((".", "/")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model.name_or_path: {name_or_path} is not a directory "
                                "(run `python -m jobs.init_offline_model` to create the offline model)")
    return name_or_path


def resolve_warm_start(ref: str, target: TrackingTarget) -> str:
    """A local model directory from a checkpoint directory, a model directory or an MLflow reference."""
    from jobs.common.registry import materialize_model, resolve_model_ref

    path = Path(ref)
    if (path / EXPORT_DIR).is_dir():  # a training checkpoint
        return str((path / EXPORT_DIR).resolve())
    return str(materialize_model(resolve_model_ref(ref, target), target.tracking_uri).resolve())


def _read_columns(files: ParquetFiles, columns: list[str]) -> dict[str, list]:
    import pyarrow.parquet as pq

    out: dict[str, list] = {name: [] for name in columns}
    for path in files.paths:
        with files.filesystem.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=columns)
        for name in columns:
            out[name].extend(table.column(name).to_pylist())
    return out


def label_counts(files: ParquetFiles, n_labels: int) -> list[int]:
    labels = _read_columns(files, ["label"])["label"]
    return [int(n) for n in np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_labels)]


def balanced_class_weights(counts: list[int]) -> list[float]:
    """n_rows / (n_classes * rows of the class); a class absent from training gets weight 0."""
    total, n = sum(counts), len(counts)
    return [total / (n * count) if count else 0.0 for count in counts]


def measure_baselines(files: dict[str, ParquetFiles], text_column: str, pair_column: str | None,
                      label_names: list[str], max_rows: int, seed: int) -> tuple[dict[str, float], dict[str, int]]:
    """The baselines' test metrics, and the rows they saw (a sample of ``max_rows`` of a bigger split)."""
    from jobs.common.baselines import baseline_metrics, joined, read_sample

    columns = [text_column, "label"] + ([pair_column] if pair_column else [])
    (train, train_total), (test, test_total) = (read_sample(files[split], columns, max_rows, seed)
                                                for split in ("train", "test"))
    metrics = baseline_metrics(joined(train[text_column], train.get(pair_column)), train["label"],
                               joined(test[text_column], test.get(pair_column)), test["label"], label_names)
    return metrics, {"train_rows": train_total, "train_rows_used": len(train["label"]), "test_rows": test_total,
                     "test_rows_used": len(test["label"]), "max_rows": max_rows, "seed": seed}


def baselines_sampled(rows: dict[str, int]) -> bool:
    return rows["train_rows_used"] < rows["train_rows"] or rows["test_rows_used"] < rows["test_rows"]


def pair_column_of(files: ParquetFiles) -> str | None:
    """``text_pair`` when the corpus holds sentence pairs (prepare_corpus with source.fields.pair_column)."""
    import pyarrow.parquet as pq

    with files.filesystem.open_input_file(files.paths[0]) as handle:
        return PAIR_COLUMN if PAIR_COLUMN in pq.read_schema(handle).names else None


def prepare(config: FinetuneConfig, target: TrackingTarget) -> TrainingPlan:
    """Validate the splits, load the tokenizer, measure the baselines: everything before compute."""
    import pandas as pd

    from data_pipeline.tokenization import load_tokenizer
    from jobs.common.datasets import parquet_summary
    from jobs.common.registry import TextClassifierModel, check_max_length, classifier_signature

    data = config.data
    files = {split: resolve_parquet_files(getattr(data, split)) for split in SPLITS}
    check_corpus_files(files)  # a prepare_corpus folder: its manifest lists these files, all of one publish
    label_names = agreed_label_names(files)  # every file of every split: the same classes, in the same order
    pair_column = pair_column_of(files["train"])
    spec = classification_spec(data.text_column, pair_column=pair_column)
    rows = {split: validate_files(files[split], spec, range(len(label_names))).rows for split in SPLITS}
    try:
        require_rows(rows, {split: ", ".join(files[split].uris()) for split in SPLITS}, config.scaling.world_size)
    except ValueError as exc:  # jobs.train.task's check raises a plain ValueError: the data is at fault here
        raise InputDataError(str(exc)) from None
    counts = {split: label_counts(files[split], len(label_names)) for split in SPLITS}
    class_weights = balanced_class_weights(counts["train"]) if config.optim.class_weights == "balanced" else None
    model_path = _resolve_model_path(config.model.name_or_path) if config.model.warm_start is None \
        else resolve_warm_start(config.model.warm_start, target)
    check_max_length(model_path, data.max_length, "data.max_length")
    tokenizer = load_tokenizer(model_path)
    baselines, baseline_rows = measure_baselines(files, data.text_column, pair_column, label_names,
                                                 data.baseline_max_rows, config.optim.seed) \
        if config.baselines else ({}, {})
    columns = ["id", data.text_column, "label"] + ([pair_column] if pair_column else [])

    def make_datasets():
        return {split: tokenized(read_parquet(files[split], columns, data.stages), model_path, data.text_column,
                                 data.max_length, ["id", "label"], data.stages, pair_column=pair_column)
                for split in SPLITS}

    stages = data.stages
    return TrainingPlan(
        task=ClassifierTask(model_path, label_names, config.optim, tokenizer.pad_token_id, class_weights),
        run_prefix="finetune", job="finetune_classifier", rows=rows,
        micro_batches_per_epoch=-(-(rows["train"] // config.scaling.world_size) // config.optim.batch_size),
        stage_cpus={"read tasks": stages.read_cpus,
                    "tokenizer actors": stages.tokenize_concurrency * stages.tokenize_cpus},
        make_datasets=make_datasets, pyfunc_model=TextClassifierModel(),
        input_example=pd.DataFrame({"text": ["质量很好，物流也快"],
                                    **({PAIR_COLUMN: ["包装完好"]} if pair_column else {})}),
        dicts={"labels.json": {"label_names": label_names},
               "label_counts.json": {split: dict(zip(label_names, n)) for split, n in counts.items()},
               **({"class_weights.json": dict(zip(label_names, class_weights))} if class_weights else {}),
               **({"baseline_rows.json": baseline_rows} if baseline_rows else {})},
        params={"text_pair_column": pair_column or "",
                **({"baseline_sample_rows": data.baseline_max_rows if baselines_sampled(baseline_rows) else "all"}
                   if baseline_rows else {})},
        tags={"model_source": config.model.name_or_path}, baselines=baselines,
        signature=classifier_signature(pair_column is not None),
        datasets={split: parquet_summary(getattr(data, split), files[split]) for split in SPLITS})


def run(config: FinetuneConfig) -> TrainingOutcome:
    return run_training_job(config, prepare)


def per_class_on_test(outcome: TrainingOutcome) -> ClassReport:
    """The test split's per-class scores, rebuilt from the run's flat metrics and label counts."""
    m, names = outcome.metrics, outcome.details["labels.json"]["label_names"]
    support = outcome.details["label_counts.json"]["test"]
    classes = tuple(ClassScores(name, m[f"test_precision_{metric_key(name)}"], m[f"test_recall_{metric_key(name)}"],
                                m[f"test_f1_{metric_key(name)}"], support[name],
                                int(m[f"test_predicted_{metric_key(name)}"])) for name in names)
    return ClassReport(rows=int(m["test_rows"]), accuracy=m["test_accuracy"], macro_f1=m["test_macro_f1"],
                       classes=classes)
