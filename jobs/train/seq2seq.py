"""The seq2seq training task: the scratch encoder-decoder Transformer (Chinese -> pinyin by default).

The job's config (``Seq2SeqTrainConfig``) and its task; ``jobs.train_seq2seq`` is its command line.
``prepare`` validates the Parquet splits (id/source/target), trains one tokenizer per side on the
train split and measures the per-character baseline; ``Seq2SeqTask`` trains through the shared loop
(``jobs/train/``) with length-bucketed token-budget batches; the run logs, registers and aliases a
pyfunc model that turns source texts into decoded target texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from data_pipeline.corpus_manifest import check_corpus_files
from data_pipeline.errors import InputDataError
from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.pinyin import Scores, baseline_scores, score
from data_pipeline.ray_stages import StageResources, read_parquet
from data_pipeline.schema import ColumnSpec, TableSpec
from data_pipeline.text_limits import max_chars
from data_pipeline.validation import DataValidationError, Problem, validate_files
from jobs.common.tracking import TrackingConfig, TrackingTarget
from jobs.train.distributed import is_distributed, unwrap
from jobs.train.driver import TrainingOutcome, report_header, run_training_job
from jobs.train.settings import OptimSettings, TrainingJobConfig
from jobs.train.task import TrainingPlan
from model.transformer import Seq2SeqArchitecture, Seq2SeqConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqData:
    """The Chinese -> pinyin pair splits (prepare_corpus writes data/pinyin) and how they are batched."""
    train: str = "data/pinyin/train.parquet"  # Parquet: a file, a directory or a glob, local or s3://
    val: str = "data/pinyin/val.parquet"  # measured after every epoch (run.checkpoint_metric)
    test: str = "data/pinyin/test.parquet"  # decoded in full once, with the model of the last epoch
    source_column: str = "source"  # the Chinese text
    target_column: str = "target"  # its pinyin, space-separated syllables
    # A micro-batch holds at most optim.batch_size rows and this many padded positions
    # (rows x the longer of source and target+1), per worker.
    max_tokens_per_batch: int = 4096
    bucket_window_rows: int = 2048  # rows sorted by length together before batches are cut
    source_vocab_size: int = 8000  # at most; the source tokenizer is trained on the train split
    target_vocab_size: int = 4000  # at most; the target tokenizer is trained on the train split
    min_frequency: int = 1  # rarer tokens become <unk>
    stages: StageResources = field(default_factory=StageResources)

    def __post_init__(self) -> None:
        if self.max_tokens_per_batch < 1 or self.bucket_window_rows < 1:
            raise ValueError("max_tokens_per_batch and bucket_window_rows must be >= 1")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqObjective:
    """The loss, and the greedy decoding that measures the model on the val and test splits."""
    label_smoothing: float = 0.1  # of the cross-entropy loss; 0: none
    # Greedy-decode at most this many val rows per worker each epoch (syllable accuracy, exact match);
    # None: all of them. The test split is always decoded in full.
    val_decode_rows: int | None = None
    decode_max_len: int | None = None  # None: the longest train target + 8 tokens, capped at model.max_len

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqTrainConfig(TrainingJobConfig):
    EXAMPLE_OVERRIDE: ClassVar[str] = "optim.epochs=20"  # --help's --set example (a unit test loads it)
    data: Seq2SeqData = field(default_factory=Seq2SeqData)
    model: Seq2SeqArchitecture = field(default_factory=Seq2SeqArchitecture)
    objective: Seq2SeqObjective = field(default_factory=Seq2SeqObjective)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(
        lr=1e-3, batch_size=256, schedule="inverse_sqrt", warmup_ratio=0.1, weight_decay=0.0, epochs=10))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(
        experiment="train-seq2seq", registered_model="zh-pinyin-transformer"))

    def __post_init__(self) -> None:
        super().__post_init__()
        decode = self.objective.decode_max_len
        if decode is not None and not 1 <= decode <= self.model.max_len:  # the decoder has max_len positions
            raise ValueError(f"objective.decode_max_len ({decode}) must be in [1, model.max_len={self.model.max_len}]")

    def node_read_paths(self) -> dict[str, str | None]:
        return {**super().node_read_paths(), "data.train": self.data.train, "data.val": self.data.val,
                "data.test": self.data.test}


# --------------------------------------------------------------------------- worker side


def _agree_across_workers(has_window: bool, n_batches: int) -> tuple[bool, int]:
    """All-reduce max of (has a window, batch count): the step count every DDP worker takes next."""
    if not is_distributed():
        return has_window, n_batches
    import ray.train.torch

    values = torch.tensor([int(has_window), n_batches], dtype=torch.long, device=ray.train.torch.get_device())
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return bool(values[0]), int(values[1])


class Seq2SeqTask:
    """The seq2seq part of the shared training loop (runs inside each Ray Train worker)."""

    primary_metric = "syllable_accuracy"
    headline_metrics = ("loss", "token_accuracy", "syllable_accuracy", "polyphonic_accuracy", "exact_match")

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
        return loss, int(tgt_out.shape[0]), (tgt_out != self.model_config.pad_id).sum()

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


def check_chars(files: dict[str, ParquetFiles], pairs: dict[str, list[tuple[str, str]]], max_len: int,
                columns: tuple[str, str] = ("source", "target")) -> None:
    """Refuse rows longer than ``max_chars(max_len)`` characters before anything tokenizes them.

    Such a row cannot fit ``max_len`` tokens but in pathological cases (``data_pipeline.text_limits``),
    and tokenizing a multi-megabyte one would cost seconds and memory for an error.
    """
    limit = max_chars(max_len)
    problems = []
    for split, rows in pairs.items():
        for index, side in enumerate(columns):
            count = sum(len(pair[index]) > limit for pair in rows)
            if count:
                problems.append(Problem(", ".join(files[split].uris()), side, count,
                                        f"have more than {limit} characters (the bound for model.max_len={max_len})"))
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
    check_corpus_files(files)  # a prepare_corpus folder: its manifest lists these files, all of one publish
    spec = pairs_spec(data)
    rows = {split: validate_files(files[split], spec).rows for split in SPLITS}
    for split, n in rows.items():
        if n < max(config.scaling.num_workers, 1):
            raise InputDataError(f"data.{split}: {n} rows, fewer than the {config.scaling.num_workers} workers")
    pairs = {split: read_pairs(files[split], data) for split in SPLITS}
    check_chars(files, pairs, config.model.max_len, (data.source_column, data.target_column))
    source_tok = train_source_tokenizer((s for s, _ in pairs["train"]), data.source_vocab_size, data.min_frequency)
    target_tok = train_target_tokenizer((t for _, t in pairs["train"]), data.target_vocab_size, data.min_frequency)
    lengths = {}
    for split in SPLITS:
        src = [len(ids) for ids in encode(source_tok, [s for s, _ in pairs[split]])]
        tgt = [len(ids) for ids in encode(target_tok, [t for _, t in pairs[split]])]
        check_lengths(split, files[split], src, tgt, config.model.max_len)
        lengths[split] = (src, tgt)
    model_config = config.model.with_vocab(source_tok.get_vocab_size(), target_tok.get_vocab_size())
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
                "source_column": data.source_column, "target_column": data.target_column,
                "max_len": prepared.model_config.max_len},
            batch_format="pyarrow", batch_size=stages.tokenize_batch_rows,
            concurrency=stages.tokenize_concurrency, num_cpus=stages.tokenize_cpus)
    return datasets


def prepare(config: Seq2SeqTrainConfig, target: TrackingTarget) -> TrainingPlan:
    from data_pipeline.seq2seq import estimate_batches_per_worker
    from jobs.common.datasets import parquet_summary
    from jobs.common.registry import seq2seq_signature
    from jobs.common.seq2seq_pyfunc import TransliterationModel, input_example

    prepared = prepare_data(config)
    stages = config.data.stages
    micro_batches = estimate_batches_per_worker(prepared.train_costs, config.scaling.world_size,
                                                config.data.bucket_window_rows, config.data.max_tokens_per_batch,
                                                config.optim.batch_size, seed=config.optim.seed)
    task = Seq2SeqTask(prepared.model_config, prepared.source_tokenizer_json, prepared.target_tokenizer_json,
                       config.data, config.optim, config.objective, prepared.polyphonic, prepared.decode_max_len)
    return TrainingPlan(
        task=task, run_prefix="seq2seq", job="train_seq2seq", rows=prepared.rows,
        micro_batches_per_epoch=micro_batches,
        stage_cpus={"read tasks": stages.read_cpus,
                    "tokenizer tasks": stages.tokenize_concurrency * stages.tokenize_cpus},
        make_datasets=lambda: pair_datasets(prepared, config.data), pyfunc_model=TransliterationModel(),
        input_example=input_example(),
        params={"source_vocab": prepared.model_config.src_vocab_size,
                "target_vocab": prepared.model_config.tgt_vocab_size,
                "polyphonic_chars": len(prepared.polyphonic), "estimated_steps_per_epoch": micro_batches,
                "decode_max_len": prepared.decode_max_len},
        dicts={"seq2seq_config.json": prepared.model_config.to_dict()}, baselines=prepared.baselines,
        signature=seq2seq_signature(),
        datasets={split: parquet_summary(getattr(config.data, split), prepared.files[split]) for split in SPLITS})


def run(config: Seq2SeqTrainConfig) -> TrainingOutcome:
    return run_training_job(config, prepare)


def report(outcome: TrainingOutcome, config: Seq2SeqTrainConfig) -> None:
    m = outcome.metrics
    nan = float("nan")
    report_header("seq2seq training finished", outcome, config)
    print("test split, same run     syllable acc  polyphonic acc  exact match")
    print(f"  model (greedy)       : {m.get('test_syllable_accuracy', nan):12.4f}  "
          f"{m.get('test_polyphonic_accuracy', nan):14.4f}  {m.get('test_exact_match', nan):11.4f}")
    if "baseline_char_test_syllable_accuracy" in m:
        print(f"  per-character reading: {m['baseline_char_test_syllable_accuracy']:12.4f}  "
              f"{m.get('baseline_char_test_polyphonic_accuracy', nan):14.4f}  "
              f"{m.get('baseline_char_test_exact_match', nan):11.4f}")
    if "train_tokens_per_s" in m:
        print(f"training throughput : {m['train_tokens_per_s']:.0f} target tokens/s (last epoch, all workers)")

