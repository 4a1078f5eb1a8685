"""Train the scratch encoder-decoder Transformer (Chinese -> pinyin by default) with Ray Train DDP.

    python -m jobs.train_seq2seq --config configs/train_seq2seq.local-cpu.yaml

Parses the config, validates the Parquet splits (id/source/target), trains one tokenizer per side
on the train split, measures the per-character baseline, trains through the shared loop
(``jobs/training.py``) with length-bucketed token-budget batches, then logs, registers and aliases
a pyfunc model that turns source texts into decoded target texts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.pinyin import Scores, baseline_scores, score
from data_pipeline.schema import ColumnSpec, TableSpec
from data_pipeline.validation import DataValidationError, Problem, validate_files
from jobs import config as config_lib
from jobs.datasets import StageResources, read_parquet
from jobs.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.tracking import TrackingConfig, TrackingTarget, client_for, prepare_tracking
from jobs.training import EXPORT_DIR, OptimSettings, RunSettings, ScalingSettings, run_training, unwrap
from model.transformer import Seq2SeqConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqData:
    train: str = "data/pinyin/train.parquet"
    val: str = "data/pinyin/val.parquet"
    test: str = "data/pinyin/test.parquet"
    source_column: str = "source"
    target_column: str = "target"
    # A micro-batch holds at most optim.batch_size rows and this many padded positions
    # (rows x the longer of source and target+1), per worker.
    max_tokens_per_batch: int = 4096
    bucket_window_rows: int = 2048  # rows sorted by length together before batches are cut
    source_vocab_size: int = 8000
    target_vocab_size: int = 4000
    min_frequency: int = 1  # rarer tokens become <unk>
    stages: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        if self.max_tokens_per_batch < 1 or self.bucket_window_rows < 1:
            raise ValueError("max_tokens_per_batch and bucket_window_rows must be >= 1")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqModelSettings:
    """``Seq2SeqConfig`` without the vocabulary sizes, which come from the trained tokenizers."""
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    dropout: float = 0.1
    max_len: int = 128  # positions: the longest source, and the longest target + 1
    norm_first: bool = True
    tie_target_embeddings: bool = True

    def __post_init__(self) -> None:
        self.build(8, 8)  # invalid shapes fail when the config is parsed, naming the field

    def build(self, src_vocab_size: int, tgt_vocab_size: int) -> Seq2SeqConfig:
        return Seq2SeqConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **asdict(self))


@dataclass(frozen=True, kw_only=True)
class Seq2SeqObjective:
    label_smoothing: float = 0.1
    # Greedy-decode at most this many val rows per worker each epoch (syllable accuracy, exact match);
    # None: all of them. The test split is always decoded in full.
    val_decode_rows: int | None = None
    decode_max_len: int | None = None  # None: the longest train target + 8 tokens, capped at model.max_len

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqTrainConfig:
    data: Seq2SeqData = field(default_factory=Seq2SeqData)
    model: Seq2SeqModelSettings = field(default_factory=Seq2SeqModelSettings)
    objective: Seq2SeqObjective = field(default_factory=Seq2SeqObjective)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(
        lr=1e-3, batch_size=256, schedule="inverse_sqrt", warmup_ratio=0.1, weight_decay=0.0, epochs=10))
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="train-seq2seq", registered_model="zh-pinyin-transformer"))
    ray: RayConfig = field(default_factory=RayConfig)
    baselines: bool = True

    def __post_init__(self) -> None:
        if self.optim.precision != "fp32" and not self.scaling.use_gpu:
            raise ValueError("optim.precision bf16/fp16 is a GPU setting; CPU runs stay fp32")


# --------------------------------------------------------------------------- worker side


def _agree_across_workers(has_window: bool, n_batches: int) -> tuple[bool, int]:
    """All-reduce max of (has a window, batch count): the step count every DDP worker takes next."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return has_window, n_batches
    import ray.train.torch

    values = torch.tensor([int(has_window), n_batches], dtype=torch.long, device=ray.train.torch.get_device())
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return bool(values[0]), int(values[1])


class Seq2SeqTask:
    """The seq2seq part of the shared training loop (runs inside each Ray Train worker)."""

    primary_metric = "syllable_accuracy"

    def __init__(self, model_config: Seq2SeqConfig, source_tokenizer_json: str, target_tokenizer_json: str,
                 data: Seq2SeqData, optim: OptimSettings, objective: Seq2SeqObjective, polyphonic: frozenset[str],
                 decode_max_len: int):
        self.model_config = model_config
        self.source_tokenizer_json = source_tokenizer_json
        self.target_tokenizer_json = target_tokenizer_json
        self.data = data
        self.optim = optim
        self.objective = objective
        self.polyphonic = polyphonic
        self.decode_max_len = decode_max_len
        self._target_tokenizer = None

    @property
    def target_tokenizer(self):
        if self._target_tokenizer is None:
            from tokenizers import Tokenizer

            self._target_tokenizer = Tokenizer.from_str(self.target_tokenizer_json)
        return self._target_tokenizer

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_target_tokenizer": None}

    def build_model(self) -> torch.nn.Module:
        from model.transformer import Seq2SeqTransformer

        return Seq2SeqTransformer(self.model_config)

    def batches(self, split: str, epoch: int, seed: int, shuffle: bool):
        import ray.train

        from data_pipeline.seq2seq import token_budget_batches

        kwargs: dict[str, Any] = {}
        if shuffle and self.optim.shuffle_buffer_rows > 0:
            kwargs = {"local_shuffle_buffer_size": self.optim.shuffle_buffer_rows, "local_shuffle_seed": seed + epoch}
        windows = ray.train.get_dataset_shard(split).iter_batches(
            batch_size=self.data.bucket_window_rows, batch_format="numpy", prefetch_batches=1, **kwargs)
        # Training steps must match across DDP workers; evaluation shards are unequal and need no agreement.
        # Evaluation batches come in a fixed random order too: batches are cut from length-sorted windows,
        # so in sorted order the first ``val_decode_rows`` would be the shortest sentences.
        agree = _agree_across_workers if split == "train" else None
        batches = token_budget_batches(windows, self.data.max_tokens_per_batch, self.optim.batch_size,
                                       seed=seed + epoch, shuffle=True, agree=agree)
        if split == "train":
            return batches
        return self._mark_decode(batches, self.objective.val_decode_rows if split == "val" else None)

    @staticmethod
    def _mark_decode(batches, decode_limit: int | None):
        """Flag the batches to greedy-decode: all of them, or the first ``decode_limit`` rows' worth."""
        decoded = 0
        for batch in batches:
            batch["decode"] = decode_limit is None or decoded < decode_limit
            decoded += len(batch["ids"]) if batch["decode"] else 0
            yield batch

    def train_loss(self, model, batch):
        from model.transformer import sequence_loss

        device = next(model.parameters()).device
        tgt_out = batch["tgt_out"].to(device)
        logits = model(batch["src_ids"].to(device), batch["tgt_in"].to(device))  # (B, T, V)
        loss = sequence_loss(logits, tgt_out, self.model_config.pad_id, self.objective.label_smoothing)
        return loss, int(tgt_out.shape[0]), int((tgt_out != self.model_config.pad_id).sum())

    def eval_sums(self, model, batch):
        from model.decoding import greedy_decode
        from model.seq2seq_io import ids_to_tokens

        cfg = self.model_config
        device = next(model.parameters()).device
        src, tgt_out = batch["src_ids"].to(device), batch["tgt_out"].to(device)
        logits = model(src, batch["tgt_in"].to(device)).float()  # (B, T, V)
        real = tgt_out != cfg.pad_id
        sums = {"loss_sum": torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(),
                                                              ignore_index=cfg.pad_id, reduction="sum"),
                "target_tokens": real.sum(),
                "teacher_forced_correct": ((logits.argmax(dim=-1) == tgt_out) & real).sum()}
        scores = Scores()
        if batch.get("decode", True):
            generated = greedy_decode(unwrap(model), src, max_len=self.decode_max_len)  # (B, L)
            predicted = [ids_to_tokens(row, self.target_tokenizer, cfg) for row in generated.tolist()]
            scores = score(batch["sources"], [t.split() for t in batch["targets"]], predicted, self.polyphonic)
        # Every worker reports the same keys: the all-reduce concatenates them in sorted order.
        sums.update({f"decode_{k}": torch.tensor(float(v)) for k, v in scores.as_counts().items()})
        return sums

    def zero_eval_sums(self):
        """The sums of no rows (a worker whose evaluation shard is empty still joins the all-reduce)."""
        keys = ["loss_sum", "target_tokens", "teacher_forced_correct"] + [f"decode_{k}" for k in Scores().as_counts()]
        return {key: torch.zeros((), dtype=torch.float64) for key in keys}

    def eval_metrics(self, sums):
        tokens = float(sums["target_tokens"])
        metrics = {"loss": float(sums["loss_sum"]) / max(tokens, 1.0),
                   "token_accuracy": float(sums["teacher_forced_correct"]) / max(tokens, 1.0)}
        scores = Scores.from_counts({k[len("decode_"):]: v for k, v in sums.items() if k.startswith("decode_")})
        if scores.rows:
            rates = scores.rates()
            metrics.update({"syllable_accuracy": rates["syllable_accuracy"], "exact_match": rates["exact_match"],
                            "decoded_token_accuracy": rates["token_accuracy"], "decoded_rows": float(scores.rows)})
            metrics["polyphonic_accuracy"] = rates["polyphonic_accuracy"]
        return {k: v for k, v in metrics.items() if not math.isnan(v)}  # e.g. no polyphonic position

    def export(self, model, directory: Path) -> None:
        from tokenizers import Tokenizer

        from model.seq2seq_io import save_seq2seq

        save_seq2seq(model, Tokenizer.from_str(self.source_tokenizer_json),
                     Tokenizer.from_str(self.target_tokenizer_json), directory)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config: Seq2SeqTrainConfig = loop_config["config"]
    run_training(loop_config["task"], config.optim, config.scaling, loop_config["context"], loop_config["config_dict"])


# --------------------------------------------------------------------------- driver side


def pairs_spec(data: Seq2SeqData) -> TableSpec:
    return TableSpec(columns=(ColumnSpec(name="id", kind="string"),
                              ColumnSpec(name=data.source_column, kind="string", nonempty=True),
                              ColumnSpec(name=data.target_column, kind="string", nonempty=True)))


def read_pairs(files: ParquetFiles, data: Seq2SeqData) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    pairs: list[tuple[str, str]] = []
    for path in files.paths:
        with files.filesystem.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=[data.source_column, data.target_column])
        pairs.extend(zip(table.column(data.source_column).to_pylist(), table.column(data.target_column).to_pylist()))
    return pairs


def check_lengths(name: str, files: ParquetFiles, src_lens: list[int], tgt_lens: list[int], max_len: int) -> None:
    """Rows the model cannot hold are an input error (cut long texts into windows when preparing data)."""
    shown = ", ".join(files.uris())
    problems = []
    too_long_src = sum(n > max_len for n in src_lens)
    too_long_tgt = sum(n + 1 > max_len for n in tgt_lens)
    empty_src = sum(n == 0 for n in src_lens)
    if too_long_src:
        problems.append(Problem(shown, "source", too_long_src, f"have more than model.max_len={max_len} tokens"))
    if too_long_tgt:
        problems.append(Problem(shown, "target", too_long_tgt, f"have more than model.max_len-1={max_len - 1} tokens"))
    if empty_src:
        problems.append(Problem(shown, "source", empty_src, "have no source token after normalisation"))
    if problems:
        raise DataValidationError(problems)


@dataclass(frozen=True)
class PreparedData:
    files: dict[str, ParquetFiles]
    rows: dict[str, int]
    source_tokenizer_json: str
    target_tokenizer_json: str
    model_config: Seq2SeqConfig
    train_costs: list[int]
    decode_max_len: int
    baselines: dict[str, float]
    polyphonic: frozenset[str]


def prepare_data(config: Seq2SeqTrainConfig) -> PreparedData:
    """Validation, tokenizers, model config and baseline: everything before compute, on the driver."""
    from data_pipeline.pinyin import ReadingTable
    from data_pipeline.seq2seq import encode, row_cost, train_source_tokenizer, train_target_tokenizer

    data = config.data
    files = {split: resolve_parquet_files(getattr(data, split)) for split in SPLITS}
    spec = pairs_spec(data)
    rows = {split: validate_files(files[split], spec).rows for split in SPLITS}
    for split, n in rows.items():
        if n < max(config.scaling.num_workers, 1):
            raise ValueError(f"data.{split}: {n} rows, fewer than the {config.scaling.num_workers} workers")
    pairs = {split: read_pairs(files[split], data) for split in SPLITS}
    source_tok = train_source_tokenizer((s for s, _ in pairs["train"]), data.source_vocab_size, data.min_frequency)
    target_tok = train_target_tokenizer((t for _, t in pairs["train"]), data.target_vocab_size, data.min_frequency)
    lengths = {}
    for split in SPLITS:
        src = [len(ids) for ids in encode(source_tok, [s for s, _ in pairs[split]])]
        tgt = [len(ids) for ids in encode(target_tok, [t for _, t in pairs[split]])]
        check_lengths(split, files[split], src, tgt, config.model.max_len)
        lengths[split] = (src, tgt)
    model_config = config.model.build(source_tok.get_vocab_size(), target_tok.get_vocab_size())
    decode_max_len = config.objective.decode_max_len or max(lengths["train"][1]) + 8
    decode_max_len = min(decode_max_len, model_config.max_len)
    train_costs = [row_cost(s, t) for s, t in zip(*lengths["train"])]

    baselines: dict[str, float] = {}
    table = ReadingTable.fit(pairs["train"])
    if config.baselines:
        scores, _ = baseline_scores(pairs["train"], pairs["test"])
        baselines = {f"baseline_char_test_{k}": v for k, v in scores.rates().items() if not math.isnan(v)}
    return PreparedData(files=files, rows=rows, source_tokenizer_json=source_tok.to_str(),
                        target_tokenizer_json=target_tok.to_str(), model_config=model_config,
                        train_costs=train_costs, decode_max_len=decode_max_len, baselines=baselines,
                        polyphonic=table.polyphonic())


def pair_datasets(prepared: PreparedData, data: Seq2SeqData) -> dict[str, Any]:
    from data_pipeline.seq2seq import tokenize_pairs

    stages = data.stages
    datasets = {}
    for split in SPLITS:
        ds = read_parquet(prepared.files[split], ["id", data.source_column, data.target_column], stages)
        # Tasks, not an actor pool: word-level tokenizers load in milliseconds, and each epoch and
        # evaluation re-executes the pipeline, where a fresh actor would cost seconds of start-up.
        datasets[split] = ds.map_batches(
            tokenize_pairs, fn_kwargs={
                "source_tokenizer_json": prepared.source_tokenizer_json,
                "target_tokenizer_json": prepared.target_tokenizer_json,
                "source_column": data.source_column, "target_column": data.target_column},
            batch_format="pyarrow", batch_size=stages.tokenize_batch_rows,
            concurrency=stages.tokenize_concurrency, num_cpus=stages.tokenize_cpus)
    return datasets


@dataclass(frozen=True)
class Seq2SeqOutcome:
    run_id: str
    metrics: dict[str, float]
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    checkpoint_path: str
    run_name: str
    model_dir: str  # the exported model inside the final checkpoint


def run(config: Seq2SeqTrainConfig) -> Seq2SeqOutcome:
    from data_pipeline.seq2seq import estimate_batches_per_worker
    from jobs.launch import checkpoint_uri, fit, make_trainer, open_training_run
    from jobs.model_registry import log_and_register
    from jobs.seq2seq_pyfunc import TransliterationModel, input_example

    # 1. Everything that can be wrong with the inputs fails here, before any compute.
    prepared = prepare_data(config)
    target: TrackingTarget = prepare_tracking(config.tracking)

    init_ray(config.ray)
    stages = config.data.stages
    check_cpu_budget({"training workers": config.scaling.num_workers * config.scaling.cpus_per_worker,
                      "read tasks": stages.read_cpus,
                      "tokenizer tasks": stages.tokenize_concurrency * stages.tokenize_cpus})
    world = max(config.scaling.num_workers, 1)
    steps_per_epoch = estimate_batches_per_worker(prepared.train_costs, world, config.data.bucket_window_rows,
                                                  config.data.max_tokens_per_batch, config.optim.batch_size,
                                                  seed=config.optim.seed)
    config_dict = config_lib.to_dict(config)
    training_run = open_training_run(
        target, config.run, "seq2seq", tags={"num_workers": str(world), "job": "train_seq2seq"},
        config_dict=config_dict,
        params={**{f"rows_{k}": v for k, v in prepared.rows.items()},
                "source_vocab": prepared.model_config.src_vocab_size,
                "target_vocab": prepared.model_config.tgt_vocab_size,
                "polyphonic_chars": len(prepared.polyphonic),
                "estimated_steps_per_epoch": steps_per_epoch,
                "decode_max_len": prepared.decode_max_len},
        dicts={"seq2seq_config.json": prepared.model_config.to_dict()}, baselines=prepared.baselines)

    context = training_run.loop_context(target, config.run, steps_per_epoch)
    task = Seq2SeqTask(prepared.model_config, prepared.source_tokenizer_json, prepared.target_tokenizer_json,
                       config.data, config.optim, config.objective, prepared.polyphonic, prepared.decode_max_len)
    trainer = make_trainer(train_loop_per_worker,
                           {"config": config, "task": task, "context": context, "config_dict": config_dict},
                           config.scaling, config.run, training_run.name, training_run.storage_path,
                           pair_datasets(prepared, config.data), ["val", "test"])
    result = fit(trainer, target, training_run)

    # 2. The model of the last epoch (the one the test metrics measure) goes to the registry.
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    checkpoint = checkpoint_uri(result.checkpoint, training_run.storage_path)
    with result.checkpoint.as_directory() as checkpoint_dir:
        registered = log_and_register(target, training_run.mlflow_run_id, TransliterationModel(),
                                      Path(checkpoint_dir) / EXPORT_DIR, config.tracking.registered_model,
                                      config.tracking.alias, input_example=input_example())
    client_for(target).set_terminated(training_run.mlflow_run_id)
    metrics.update(prepared.baselines)
    return Seq2SeqOutcome(run_id=training_run.mlflow_run_id, metrics=metrics, model_uri=registered.model_uri,
                          registered_name=registered.name, registered_version=registered.version,
                          checkpoint_path=checkpoint, run_name=training_run.name,
                          model_dir=f"{checkpoint}/{EXPORT_DIR}")


def report(outcome: Seq2SeqOutcome, config: Seq2SeqTrainConfig) -> None:
    m = outcome.metrics
    nan = float("nan")
    print("\n=== seq2seq training finished ===")
    print(f"MLflow run      : {outcome.run_id} (experiment '{config.tracking.experiment}')")
    if outcome.registered_name:
        print(f"registered model: {outcome.registered_name} version {outcome.registered_version} "
              f"(alias @{config.tracking.alias})")
    print(f"checkpoint      : {outcome.checkpoint_path}")
    print("test split, same run     syllable acc  polyphonic acc  exact match")
    print(f"  model (greedy)       : {m.get('test_syllable_accuracy', nan):12.4f}  "
          f"{m.get('test_polyphonic_accuracy', nan):14.4f}  {m.get('test_exact_match', nan):11.4f}")
    if "baseline_char_test_syllable_accuracy" in m:
        print(f"  per-character reading: {m['baseline_char_test_syllable_accuracy']:12.4f}  "
              f"{m.get('baseline_char_test_polyphonic_accuracy', nan):14.4f}  "
              f"{m.get('baseline_char_test_exact_match', nan):11.4f}")
    if "train_tokens_per_s" in m:
        print(f"training throughput : {m['train_tokens_per_s']:.0f} target tokens/s (last epoch, all workers)")


def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(Seq2SeqTrainConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    report(outcome, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
