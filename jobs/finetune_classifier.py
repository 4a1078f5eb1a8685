"""Fine-tune a BERT-style classifier (MiniRBT-H256 by default) with Ray Train DDP.

    python -m jobs.finetune_classifier --config configs/finetune_classifier.local-cpu.yaml

Parses the config, validates the Parquet splits, measures two baselines, trains with
``TorchTrainer``, then logs, registers and aliases the model in MLflow.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.schema import classification_spec
from data_pipeline.tokenization import PadCollate
from data_pipeline.validation import validate_files
from jobs import config as config_lib
from jobs.datasets import StageResources, label_names_of, read_parquet, tokenized
from jobs.launch import checkpoint_uri, fit, make_trainer, open_training_run
from jobs.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.tracking import TrackingConfig, TrackingTarget, client_for, prepare_tracking
from jobs.training import (EXPORT_DIR, OptimSettings, RunSettings, ScalingSettings, iterate_shard,
                           run_training)

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
class FinetuneConfig:
    data: ClassifierData = field(default_factory=ClassifierData)
    model: ClassifierModel = field(default_factory=ClassifierModel)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=1e-4))
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    run: RunSettings = field(default_factory=lambda: RunSettings(checkpoint_metric="val_accuracy",
                                                                 checkpoint_mode="max"))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="finetune-classifier", registered_model="review-sentiment"))
    ray: RayConfig = field(default_factory=RayConfig)
    baselines: bool = True

    def __post_init__(self) -> None:
        if self.optim.precision != "fp32" and not self.scaling.use_gpu:
            raise ValueError("optim.precision bf16/fp16 is a GPU setting; CPU runs stay fp32")


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
        return out.loss, int(mask.shape[0]), int(mask.sum())

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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config: FinetuneConfig = loop_config["config"]
    run_training(loop_config["task"], config.optim, config.scaling, loop_config["context"], loop_config["config_dict"])


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
    from jobs.model_registry import materialize_model, resolve_model_ref

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
    from jobs.baselines import char_ngram_accuracy, majority_accuracy

    train_texts, train_labels = _texts_and_labels(files["train"], text_column)
    test_texts, test_labels = _texts_and_labels(files["test"], text_column)
    return {"baseline_majority_test_accuracy": majority_accuracy(train_labels, test_labels),
            "baseline_char_ngram_test_accuracy": char_ngram_accuracy(train_texts, train_labels, test_texts,
                                                                     test_labels)}


@dataclass(frozen=True)
class FinetuneOutcome:
    run_id: str
    metrics: dict[str, float]
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    checkpoint_path: str
    run_name: str


def run(config: FinetuneConfig) -> FinetuneOutcome:
    from data_pipeline.tokenization import load_tokenizer
    from jobs.model_registry import TextClassifierModel, log_and_register

    # 1. Everything that can be wrong with the inputs fails here, before any compute.
    files = {split: resolve_parquet_files(getattr(config.data, split)) for split in SPLITS}
    label_names = label_names_of(files["train"])
    if label_names is None:
        raise ValueError(f"{files['train'].uris()[0]}: no label_names in the Parquet metadata "
                         "(write corpora with `python -m jobs.prepare_corpus`)")
    spec = classification_spec(config.data.text_column)
    rows = {split: validate_files(files[split], spec, range(len(label_names))).rows for split in SPLITS}
    target: TrackingTarget = prepare_tracking(config.tracking)
    model_path = _resolve_model_path(config.model.name_or_path) if config.model.warm_start is None \
        else resolve_warm_start(config.model.warm_start, target)
    tokenizer = load_tokenizer(model_path)

    # 2. Baselines on the same split, in the same run.
    baselines = measure_baselines(files, config.data.text_column) if config.baselines else {}

    init_ray(config.ray)
    stages = config.data.stages
    check_cpu_budget({"training workers": config.scaling.num_workers * config.scaling.cpus_per_worker,
                      "read tasks": stages.read_cpus,
                      "tokenizer actors": stages.tokenize_concurrency * stages.tokenize_cpus})
    world = max(config.scaling.num_workers, 1)
    steps_per_epoch = -(-(rows["train"] // world) // config.optim.batch_size)
    config_dict = config_lib.to_dict(config)
    training_run = open_training_run(
        target, config.run, "finetune",
        tags={"num_workers": str(world), "job": "finetune_classifier", "model_source": config.model.name_or_path},
        config_dict=config_dict, params={f"rows_{k}": v for k, v in rows.items()},
        dicts={"labels.json": {"label_names": label_names}}, baselines=baselines)

    datasets = {}
    for split in SPLITS:
        ds = read_parquet(files[split], ["id", config.data.text_column, "label"], config.data.stages)
        datasets[split] = tokenized(ds, model_path, config.data.text_column, config.data.max_length,
                                    ["id", "label"], config.data.stages)
    context = training_run.loop_context(target, config.run, steps_per_epoch)
    task = ClassifierTask(model_path, label_names, config.optim, tokenizer.pad_token_id)
    trainer = make_trainer(train_loop_per_worker,
                           {"config": config, "task": task, "context": context, "config_dict": config_dict},
                           config.scaling, config.run, training_run.name, training_run.storage_path, datasets,
                           ["val", "test"])
    result = fit(trainer, target, training_run)

    # 3. The model of the last epoch (the one the test metrics measure) goes to the registry.
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    with result.checkpoint.as_directory() as checkpoint_dir:
        import pandas as pd

        registered = log_and_register(target, training_run.mlflow_run_id, TextClassifierModel(),
                                      Path(checkpoint_dir) / EXPORT_DIR, config.tracking.registered_model,
                                      config.tracking.alias, input_example=pd.DataFrame({"text": ["质量很好，物流也快"]}))
    client_for(target).set_terminated(training_run.mlflow_run_id)
    metrics.update(baselines)
    return FinetuneOutcome(run_id=training_run.mlflow_run_id, metrics=metrics, model_uri=registered.model_uri,
                           registered_name=registered.name, registered_version=registered.version,
                           checkpoint_path=checkpoint_uri(result.checkpoint, training_run.storage_path),
                           run_name=training_run.name)


def report(outcome: FinetuneOutcome, config: FinetuneConfig) -> None:
    m = outcome.metrics
    print("\n=== fine-tuning finished ===")
    print(f"MLflow run      : {outcome.run_id} (experiment '{config.tracking.experiment}')")
    if outcome.registered_name:
        print(f"registered model: {outcome.registered_name} version {outcome.registered_version} "
              f"(alias @{config.tracking.alias})")
    print(f"checkpoint      : {outcome.checkpoint_path}")
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
