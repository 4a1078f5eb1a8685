"""Fine-tune a BERT-style classifier (MiniRBT-H256 by default) with Ray Train DDP.

    python -m jobs.finetune_classifier --config configs/finetune_classifier.local-cpu.yaml

This module is the job's config and its task; ``jobs.train.driver`` does the rest. ``prepare``
validates the Parquet splits and measures two baselines on the driver; ``ClassifierTask`` is the
model-specific part of the loop inside each worker. The trained model is logged, registered and
aliased in MLflow.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_pipeline.batching import iterate_shard
from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.ray_stages import StageResources, label_names_of, read_parquet, tokenized
from data_pipeline.schema import classification_spec
from data_pipeline.tokenization import PadCollate
from data_pipeline.validation import validate_files
from jobs.common import config as config_lib
from jobs.common.tracking import TrackingConfig, TrackingTarget
from jobs.train.checkpoint import EXPORT_DIR
from jobs.train.driver import TrainingOutcome, report_header, run_training_job
from jobs.train.settings import OptimSettings, RunSettings, TrainingJobConfig
from jobs.train.task import TrainingPlan

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class ClassifierData:
    train: str = "data/corpus/train.parquet"
    val: str = "data/corpus/val.parquet"
    test: str = "data/corpus/test.parquet"
    text_column: str = "text"
    max_length: int = 128  # tokens; longer texts are truncated
    stages: StageResources = field(default_factory=StageResources)


@dataclass(frozen=True, kw_only=True)
class ClassifierModel:
    # A hub id (hfl/minirbt-h256, where the hub is reachable) or a local save_pretrained directory;
    # `python -m jobs.init_offline_model` writes the default one.
    name_or_path: str = "artifacts/minirbt-h256-random"
    # Warm start (--resume-from): an earlier checkpoint directory, run id, runs:/ or models:/ URI.
    # Its weights and tokenizer replace name_or_path; optimiser and schedule start fresh.
    warm_start: str | None = None


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainingJobConfig):
    data: ClassifierData = field(default_factory=ClassifierData)
    model: ClassifierModel = field(default_factory=ClassifierModel)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=1e-4))
    run: RunSettings = field(default_factory=lambda: RunSettings(checkpoint_metric="val_accuracy",
                                                                 checkpoint_mode="max"))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="finetune-classifier", registered_model="review-sentiment"))


class ClassifierTask:
    """The classifier's part of the shared training loop (runs inside each Ray Train worker)."""

    primary_metric = "accuracy"

    def __init__(self, model_path: str, label_names: list[str], optim: OptimSettings, pad_id: int):
        self.model_path = model_path
        self.label_names = label_names
        self.optim = optim
        self.pad_id = pad_id

    def build_model(self) -> torch.nn.Module:
        from model.classifier import load_classifier

        return load_classifier(self.model_path, self.label_names).model

    def batches(self, split: str, epoch: int, seed: int, shuffle: bool):
        import ray.train

        return iterate_shard(ray.train.get_dataset_shard(split), self.optim.batch_size,
                             PadCollate(self.pad_id, keep_ids=split == "train"), seed, epoch, shuffle,
                             self.optim.shuffle_buffer_rows, self.optim.length_grouping if shuffle else 0)

    def train_loss(self, model, batch):
        device = next(model.parameters()).device
        mask = batch["attention_mask"].to(device)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, labels=batch["labels"].to(device))
        return out.loss, int(mask.shape[0]), mask.sum()

    def eval_sums(self, model, batch):
        device = next(model.parameters()).device
        labels = batch["labels"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()
        n = len(self.label_names)
        predicted = logits.argmax(dim=-1)
        confusion = torch.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)  # (true, predicted)
        return {"loss_sum": torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                "confusion": confusion}

    def zero_eval_sums(self):
        n = len(self.label_names)
        return {"loss_sum": torch.zeros(()), "confusion": torch.zeros(n, n, dtype=torch.long)}

    def eval_metrics(self, sums):
        confusion = sums["confusion"]
        count = confusion.sum()
        true_pos = confusion.diagonal()
        precision = true_pos / confusion.sum(dim=0).clamp(min=1)
        recall = true_pos / confusion.sum(dim=1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"loss": float(sums["loss_sum"] / count), "accuracy": float(true_pos.sum() / count),
                "macro_f1": float(f1.mean()), "rows": float(count)}

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


def _texts_and_labels(files: ParquetFiles, text_column: str) -> tuple[list[str], list[int]]:
    import pyarrow.parquet as pq

    texts, labels = [], []
    for path in files.paths:
        with files.filesystem.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=[text_column, "label"])
        texts.extend(table.column(text_column).to_pylist())
        labels.extend(table.column("label").to_pylist())
    return texts, labels


def measure_baselines(files: dict[str, ParquetFiles], text_column: str) -> dict[str, float]:
    from jobs.common.baselines import char_ngram_accuracy, majority_accuracy

    train_texts, train_labels = _texts_and_labels(files["train"], text_column)
    test_texts, test_labels = _texts_and_labels(files["test"], text_column)
    return {"baseline_majority_test_accuracy": majority_accuracy(train_labels, test_labels),
            "baseline_char_ngram_test_accuracy": char_ngram_accuracy(train_texts, train_labels, test_texts,
                                                                     test_labels)}


def prepare(config: FinetuneConfig, target: TrackingTarget) -> TrainingPlan:
    """Validate the splits, load the tokenizer, measure the baselines: everything before compute."""
    import pandas as pd

    from data_pipeline.tokenization import load_tokenizer
    from jobs.common.registry import TextClassifierModel

    data = config.data
    files = {split: resolve_parquet_files(getattr(data, split)) for split in SPLITS}
    label_names = label_names_of(files["train"])
    if label_names is None:
        raise ValueError(f"{files['train'].uris()[0]}: no label_names in the Parquet metadata "
                         "(write corpora with `python -m jobs.prepare_corpus`)")
    spec = classification_spec(data.text_column)
    rows = {split: validate_files(files[split], spec, range(len(label_names))).rows for split in SPLITS}
    model_path = _resolve_model_path(config.model.name_or_path) if config.model.warm_start is None \
        else resolve_warm_start(config.model.warm_start, target)
    tokenizer = load_tokenizer(model_path)

    def make_datasets():
        return {split: tokenized(read_parquet(files[split], ["id", data.text_column, "label"], data.stages),
                                 model_path, data.text_column, data.max_length, ["id", "label"], data.stages)
                for split in SPLITS}

    stages = data.stages
    return TrainingPlan(
        task=ClassifierTask(model_path, label_names, config.optim, tokenizer.pad_token_id),
        run_prefix="finetune", job="finetune_classifier", rows=rows,
        micro_batches_per_epoch=-(-(rows["train"] // config.scaling.world_size) // config.optim.batch_size),
        stage_cpus={"read tasks": stages.read_cpus,
                    "tokenizer actors": stages.tokenize_concurrency * stages.tokenize_cpus},
        make_datasets=make_datasets, pyfunc_model=TextClassifierModel(),
        input_example=pd.DataFrame({"text": ["质量很好，物流也快"]}),
        dicts={"labels.json": {"label_names": label_names}}, tags={"model_source": config.model.name_or_path},
        baselines=measure_baselines(files, data.text_column) if config.baselines else {})


def run(config: FinetuneConfig) -> TrainingOutcome:
    return run_training_job(config, prepare)


def report(outcome: TrainingOutcome, config: FinetuneConfig) -> None:
    m = outcome.metrics
    report_header("fine-tuning finished", outcome, config)
    print("test accuracy, same split, same run:")
    print(f"  model ({config.model.name_or_path}): {m.get('test_accuracy', float('nan')):.4f} "
          f"(macro-F1 {m.get('test_macro_f1', float('nan')):.4f})")
    if "baseline_majority_test_accuracy" in m:
        print(f"  majority class             : {m['baseline_majority_test_accuracy']:.4f}")
        print(f"  char 1-3-gram TF-IDF + LR  : {m['baseline_char_ngram_test_accuracy']:.4f}")


def _resume_flag(parser) -> None:
    parser.add_argument("--resume-from", metavar="REF", help="warm-start from a checkpoint directory, an MLflow "
                        "run id, runs:/ or models:/ URI (same as --set model.warm_start=REF)")


def main(argv: list[str] | None = None) -> int:
    config, args = config_lib.parse_args(FinetuneConfig, __doc__.splitlines()[0], argv, extra=_resume_flag)
    if args.resume_from:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, warm_start=args.resume_from))
    outcome = run(config)
    report(outcome, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
