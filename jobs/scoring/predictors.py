"""Callable predictor classes for Ray Data ``map_batches``: the model is loaded once per actor.

``__call__(batch) -> batch`` reads no globals; concurrency, batch size and GPUs come from the
job config. Rows are scored in length-sorted chunks so each forward pass pads little. Rows the
read stage tagged as unscorable (``scorable`` false, see ``data_pipeline.quarantine``) are
passed through unscored, so the sink can write them to ``_rejected/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from data_pipeline.quarantine import GROUP, REJECT_REASON, SCORABLE, SOURCE_FILE
from data_pipeline.text_limits import cut_texts, max_chars
from data_pipeline.tokenization import TokenizeBatch, pad_batch
from jobs.common.injected_delay import InjectedDelay
from jobs.common.precision import autocast_for
from jobs.common.registry import ResolvedModel, materialize_model, model_kind

PASS_THROUGH = (SOURCE_FILE, REJECT_REASON, GROUP)  # columns carried from the read stage to the sink


def model_dir_on_node(resolved: ResolvedModel, tracking_uri: str | None, local_hint: str | None) -> str:
    """The driver's copy of the model when this node sees it (one machine, shared disk), else download."""
    if local_hint and model_kind(local_hint) is not None:
        return local_hint
    return str(materialize_model(resolved, tracking_uri))


@dataclass(frozen=True, kw_only=True)
class PredictorSettings:
    """The predictor actors: how many, what each reserves, how they batch and run the model."""
    concurrency: int = 2  # predictor actors
    num_cpus: float = 0.5  # per actor; fractions leave room for read and tokenize stages
    num_gpus: float = 0.0  # per actor, e.g. 1 (or 0.5 to pack two actors on a GPU)
    # Rows handed to one actor call, sorted by length there before forward passes are cut: 512-row
    # calls padded MiniRBT review batches to 1.12x their real tokens, 2048-row calls to 1.03x
    # (BENCHMARKS.md, question 4).
    rows_per_call: int = 2048
    forward_batch_size: int = 64  # rows per forward pass, grouped by length
    # Padded tokens per forward pass (rows x the longest row's tokens), 0 for no cap: with it the
    # short rows of a length-sorted call go in wide passes and the long ones in narrow ones, so a
    # GPU gets passes of about one size (forward_batch_size still caps the rows).
    forward_batch_tokens: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 on GPU actors only (num_gpus > 0)
    # dynamic_int8: the Linear layers' weights stored in int8, activations quantized per pass
    # (torch.ao.quantization.quantize_dynamic); embeddings, layer norms and attention stay fp32.
    # CPU actors in fp32 only. Classifiers only.
    quantize: Literal["none", "dynamic_int8"] = "none"
    # torch.compile the model in each actor, with dynamic shapes (passes vary in length). Classifiers
    # only. Off by default: on 2 CPU cores it did not pay (BENCHMARKS.md, question 4b).
    compile: bool = False
    beam_size: int = 1  # seq2seq models: 1 decodes greedily, more runs beam search
    torch_threads: int = 1  # intra-op threads per actor; actors x threads <= cores
    # Tokenize inside the predictor actors instead of a separate tokenizer stage: one actor
    # process fewer per pipeline (start-up dominates small runs on small CPU machines). Keep it
    # off on GPUs, where tokenizing in the actor would leave the GPU idle.
    tokenize_in_actor: bool = False

    def numerics(self) -> dict:
        """The settings the scores depend on besides the model: recorded beside every published output."""
        return {"precision": self.precision, "quantize": self.quantize, "compile": self.compile,
                "beam_size": self.beam_size}

    def __post_init__(self) -> None:
        if self.precision != "fp32" and self.num_gpus <= 0:
            raise ValueError(f"precision {self.precision} is a GPU setting (num_gpus > 0); CPU actors stay fp32")
        if self.quantize != "none" and (self.num_gpus > 0 or self.precision != "fp32"):
            raise ValueError(f"quantize {self.quantize} is for CPU actors in fp32: set num_gpus: 0 and "
                             "precision: fp32 (on GPUs use precision bf16 or fp16)")
        if self.forward_batch_tokens < 0:
            raise ValueError("forward_batch_tokens must be >= 0 (0: no cap)")


def forward_passes(sorted_tokens: np.ndarray, max_rows: int, max_tokens: int = 0) -> list[slice]:
    """Cut rows sorted by ascending length into forward passes of at most ``max_rows`` rows and, when
    ``max_tokens`` > 0, at most that many padded tokens (rows x the pass's longest row); a row longer
    than the budget goes alone."""
    passes, start, n = [], 0, len(sorted_tokens)
    while start < n:
        stop = start + 1
        while (stop < n and stop - start < max_rows
               and (not max_tokens or (stop - start + 1) * int(sorted_tokens[stop]) <= max_tokens)):
            stop += 1
        passes.append(slice(start, stop))
        start = stop
    return passes


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its Linear layers' weights in int8, activations quantized on the fly (CPU)."""
    import warnings

    with warnings.catch_warnings():
        # torch 2.13 flags all of torch.ao.quantization and its quantized tensors as deprecated in
        # favour of torchao (not a dependency here; the migration path when torch drops this); the
        # eager dynamic path still works, and the notice, repeated by every actor, tells a user of
        # the job nothing they can act on.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)  # the same notice, from the int8 weights' creation
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def prepare_classifier(model: torch.nn.Module, settings: PredictorSettings, device: torch.device) -> torch.nn.Module:
    """The loaded classifier as the settings ask: on its device, in eval mode, half, int8 or compiled."""
    model = model.eval().to(device)
    if device.type == "cuda" and settings.precision in ("fp16", "bf16"):
        model = model.to(torch.float16 if settings.precision == "fp16" else torch.bfloat16)
    if settings.quantize == "dynamic_int8":
        model = quantize_dynamic_int8(model)
    if settings.compile:
        model = torch.compile(model, dynamic=True)  # passes vary in length and row count
    return model


# Fault injection for tests: seconds each predictor call sleeps, so that a node can be removed while the
# actors on it are scoring (the pipeline ships the variable to the actors; nothing reads it otherwise).
PREDICT_DELAY_ENV = "TEXT_JOBS_TEST_PREDICT_DELAY_S"


class ClassifierPredictor:
    def __init__(self, resolved: ResolvedModel, tracking_uri: str | None, settings: PredictorSettings,
                 local_model_dir: str | None = None):
        from model.classifier import load_classifier

        torch.set_num_threads(settings.torch_threads)
        self.device = torch.device("cuda" if settings.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        loaded = load_classifier(model_dir_on_node(resolved, tracking_uri, local_model_dir))
        self.model = prepare_classifier(loaded.model, settings, self.device)
        self.label_names = np.array(loaded.label_names, dtype=object)
        self.pad_id = loaded.tokenizer.pad_token_id
        self.forward_batch_size = settings.forward_batch_size
        self.forward_batch_tokens = settings.forward_batch_tokens
        self.lineage = {"model_name": resolved.name, "model_version": resolved.version,
                        "model_run_id": resolved.run_id}
        self.test_delay = InjectedDelay.from_env(PREDICT_DELAY_ENV)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from model.classifier import class_probabilities

        if self.test_delay is not None:
            self.test_delay.sleep()
        n = len(batch["input_ids"])
        scorable = batch["scorable"] if "scorable" in batch else np.ones(n, dtype=bool)
        todo = np.flatnonzero(scorable)
        order = todo[np.argsort(batch["num_tokens"][todo], kind="stable")]  # similar lengths share a pass
        labels = np.full(n, -1, dtype=np.int64)  # -1 / NaN / None on rejected rows, which the sink drops
        probs = np.full(n, np.nan, dtype=np.float32)
        with torch.inference_mode():
            for cut in forward_passes(batch["num_tokens"][order], self.forward_batch_size, self.forward_batch_tokens):
                rows = order[cut]
                padded = pad_batch({key: batch[key][rows] for key in ("input_ids", "token_type_ids") if key in batch},
                                   self.pad_id, label_column=None)
                token_types = padded.get("token_type_ids")
                p = class_probabilities(self.model, padded["input_ids"].to(self.device),
                                        padded["attention_mask"].to(self.device),
                                        None if token_types is None else token_types.to(self.device))
                best = p.max(dim=-1)
                labels[rows] = best.indices.cpu().numpy()
                probs[rows] = best.values.cpu().numpy()
        names = np.full(n, None, dtype=object)
        names[todo] = self.label_names[labels[todo]]
        out = {"id": batch["id"], "label": labels, "label_name": names, "probability": probs,
               "truncated": batch["truncated"], "scorable": np.asarray(scorable, dtype=bool)}
        for key, value in self.lineage.items():
            out[key] = np.full(n, value, dtype=object)
        for key in PASS_THROUGH:
            if key in batch:
                out[key] = batch[key]
        return out


_TOKENIZERS: dict[tuple, TokenizeBatch] = {}  # per worker process, reused across pipelines


def tokenize_tagged(batch: pa.Table, resolved: ResolvedModel, tracking_uri: str | None,
                    local_model_dir: str | None, text_column: str, max_length: int,
                    keep_columns: Sequence[str], pair_column: str | None = None) -> pa.Table:
    """The shared tokenizer stage as a task function, loading the model's tokenizer on whichever node runs it.

    Tasks run in warm worker processes that keep the tokenizer between pipelines (an actor pool
    starts again for every dataset execution). Rejected rows arrive with text ``""`` (two
    tokens), so they cost next to nothing; ``keep_columns`` carries the tags to the predictor.
    """
    key = (resolved.load_uri, local_model_dir, text_column, max_length, tuple(keep_columns), pair_column)
    stage = _TOKENIZERS.get(key)
    if stage is None:
        _TOKENIZERS.clear()  # one model per process at a time
        stage = _TOKENIZERS[key] = TokenizeBatch(model_dir_on_node(resolved, tracking_uri, local_model_dir),
                                                 text_column, max_length, keep_columns, pair_column)
    return stage(batch)


class TokenizingClassifierPredictor(ClassifierPredictor):
    """``ClassifierPredictor`` that tokenizes its own batches (``PredictorSettings.tokenize_in_actor``)."""

    def __init__(self, resolved: ResolvedModel, tracking_uri: str | None, settings: PredictorSettings,
                 local_model_dir: str | None = None, text_column: str = "text", max_length: int = 128,
                 keep_columns: Sequence[str] = (), pair_column: str | None = None):
        super().__init__(resolved, tracking_uri, settings, local_model_dir)
        self.tokenize = TokenizeBatch(model_dir_on_node(resolved, tracking_uri, local_model_dir), text_column,
                                      max_length, keep_columns, pair_column)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:  # type: ignore[override]
        tokens = self.tokenize(batch)
        return super().__call__({name: tokens.column(name).to_numpy(zero_copy_only=False)
                                 for name in tokens.column_names})


class Seq2SeqPredictor:
    """Decode each scorable row's text with a seq2seq export (``model/seq2seq_io.py``).

    Tokenizes in the actor: the model's own source tokenizer, not a Hugging Face one, and
    decoding, not tokenizing, bounds the throughput. Sources longer than the model's
    ``max_len`` are cut to it and flagged ``truncated``; a text is cut to ``max_chars(max_len)``
    characters before it is tokenized (``data_pipeline.text_limits``), and flagged too.
    """

    def __init__(self, resolved: ResolvedModel, tracking_uri: str | None, settings: PredictorSettings,
                 local_model_dir: str | None = None, text_column: str = "text", max_length: int = 128,
                 keep_columns: Sequence[str] = ()):  # keep_columns: same signature as the tokenizing predictor
        from model.seq2seq_io import load_seq2seq

        torch.set_num_threads(settings.torch_threads)
        device = "cuda" if settings.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.loaded = load_seq2seq(model_dir_on_node(resolved, tracking_uri, local_model_dir), device)
        # Half precision by autocast, as training does: the weights stay fp32, and the decoder's masks
        # and scores (-inf fills, log-softmax over the vocabulary) are kept in fp32 where autocast says so.
        self.precision = settings.precision if device == "cuda" else "fp32"
        self.device = torch.device(device)
        self.text_column = text_column
        self.max_new_tokens = max_length
        self.beam_size = settings.beam_size
        self.forward_batch_size = settings.forward_batch_size
        self.lineage = {"model_name": resolved.name, "model_version": resolved.version,
                        "model_run_id": resolved.run_id}

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        from model.seq2seq_io import encode_source_ids, generate_from_ids

        n = batch.num_rows
        scorable = batch.column(SCORABLE).to_numpy(zero_copy_only=False)
        todo = np.flatnonzero(scorable)
        texts = batch.column(self.text_column).to_pylist()
        texts, cut = cut_texts([texts[i] for i in todo], max_chars(self.loaded.config.max_len))
        encoded = encode_source_ids(self.loaded, texts)
        with autocast_for(self.precision, self.device):
            outputs = generate_from_ids(self.loaded, encoded, beam_size=self.beam_size,
                                        max_len=self.max_new_tokens, batch_size=self.forward_batch_size)
        generated = np.full(n, None, dtype=object)
        generated[todo] = [" ".join(tokens) for tokens in outputs]
        truncated = np.zeros(n, dtype=bool)
        truncated[todo] = [was_cut or len(ids) > self.loaded.config.max_len for was_cut, ids in zip(cut, encoded)]
        out = {"id": batch.column("id").to_numpy(zero_copy_only=False), "generated": generated,
               "truncated": truncated, "scorable": np.asarray(scorable, dtype=bool)}
        for key, value in self.lineage.items():
            out[key] = np.full(n, value, dtype=object)
        for key in PASS_THROUGH:
            if key in batch.column_names:
                out[key] = batch.column(key).to_numpy(zero_copy_only=False)
        return out
