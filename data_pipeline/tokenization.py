"""Tokenization as a streaming Ray Data ``map_batches`` stage, and dynamic-padding collation.

Rows leave the tokenizer unpadded (a list<int32> column plus its length); each training or
scoring batch is padded to its own longest row by ``pad_batch``. Reviews have a median of
~49 characters, so padding to a fixed 128 would waste most of the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from ray.data.collate_fn import NumpyBatchCollateFn

from data_pipeline.text_limits import cut_texts, max_chars

if TYPE_CHECKING:
    import tokenizers
    import torch
    from transformers import PreTrainedTokenizerBase

# torch and transformers are imported where they are used, not here: Ray Data unpickles
# ``tokenize_texts`` in every process that plans or runs a dataset (a training run's split
# coordinators, one per split, and each cold tokenize process), and the two imports cost ~4 s of
# start-up there, for a stage whose work is the Rust tokenizer's.


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if not tokenizer.is_fast:
        raise ValueError(f"{name_or_path}: a fast (Rust) tokenizer is required for batch tokenization")
    return tokenizer


def tokenizer_json(name_or_path: str) -> str:
    """The Rust tokenizer behind ``load_tokenizer(name_or_path)``, serialized for the tokenize stage.

    Loaded with transformers where it is cheap to do so (the driver, which loads it anyway), so every
    tokenizer_config.json setting is applied; the stage rebuilds it with ``tokenizers`` alone. The
    truncation side travels in the serialized truncation settings.
    """
    return serialize_tokenizer(load_tokenizer(name_or_path))


def serialize_tokenizer(loaded: PreTrainedTokenizerBase) -> str:
    backend = loaded.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length=512, direction=loaded.truncation_side)  # the stage reads the direction
    return backend.to_str()


def rust_tokenizer(serialized: str) -> tokenizers.Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(serialized)


class TokenizeBatch:
    """Callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``.

    The tokenizer is loaded once per actor. Output: the ``keep_columns``, ``input_ids``
    (list<int32>, truncated to ``max_length``), ``num_tokens`` and ``truncated`` (the text was
    longer than ``max_length`` tokens and was cut, not dropped). With ``pair_column``, each row
    is a sentence pair, ``[CLS] text [SEP] pair [SEP]``, plus ``token_type_ids`` (0 for the first
    segment, 1 for the second); a long pair is cut from the end of its longer segment first
    (``longest_first``), so the start of each field survives. Each text (and pair) is cut to
    ``max_chars(max_length)`` characters before the tokenizer sees it (``data_pipeline.text_limits``:
    a multi-megabyte row costs what a long review costs) and a cut row is ``truncated``.
    """

    def __init__(self, tokenizer_path: str, text_column: str, max_length: int,
                 keep_columns: Sequence[str] = (), pair_column: str | None = None, serialized: str | None = None):
        # ``serialized`` (``tokenizer_json`` of the path, made by the caller): no transformers here
        self.tokenizer = rust_tokenizer(serialized or tokenizer_json(tokenizer_path))
        self.truncation_side = (self.tokenizer.truncation or {}).get("direction", "right")
        self.text_column = text_column
        self.pair_column = pair_column
        self.max_length = max_length
        self.max_chars = max_chars(max_length)
        self.keep_columns = tuple(keep_columns)

    def _encode(self, texts: list[str], pairs: list[str] | None, truncate: bool) -> dict[str, list[list[int]]]:
        # what a transformers fast tokenizer's __call__ does with these arguments, without its wrapper
        if truncate:
            self.tokenizer.enable_truncation(self.max_length, strategy="longest_first",
                                             direction=self.truncation_side)
        else:
            self.tokenizer.no_truncation()
        encodings = self.tokenizer.encode_batch(texts if pairs is None else list(zip(texts, pairs)),
                                                add_special_tokens=True)
        out = {"input_ids": [e.ids for e in encodings]}
        if pairs is not None:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts, cut = cut_texts(batch.column(self.text_column).to_pylist(), self.max_chars)
        pairs = None
        if self.pair_column is not None:
            pairs, cut_pairs = cut_texts(batch.column(self.pair_column).to_pylist(), self.max_chars)
            cut = [a or b for a, b in zip(cut, cut_pairs)]
        encoded = dict(self._encode(texts, pairs, truncate=False))
        truncated = [len(ids) > self.max_length for ids in encoded["input_ids"]]
        if any(truncated):  # rare: re-encode only the long rows, letting the tokenizer place [SEP]
            long_rows = [i for i, cut in enumerate(truncated) if cut]
            recut = self._encode([texts[i] for i in long_rows],
                                 None if pairs is None else [pairs[i] for i in long_rows], truncate=True)
            for key in encoded:
                for i, ids in zip(long_rows, recut[key]):
                    encoded[key][i] = ids
        truncated = [a or b for a, b in zip(truncated, cut)]
        columns = {name: batch.column(name) for name in self.keep_columns}
        if pairs is not None:
            columns["token_type_ids"] = pa.array(encoded["token_type_ids"], type=pa.list_(pa.int8()))
        encoded = encoded["input_ids"]
        columns["input_ids"] = pa.array(encoded, type=pa.list_(pa.int32()))
        columns["num_tokens"] = pa.array([len(ids) for ids in encoded], type=pa.int32())
        columns["truncated"] = pa.array(truncated, type=pa.bool_())
        return pa.table(columns)


class PadCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate: dynamic padding, plus the row ids as a list when asked."""

    def __init__(self, pad_id: int, label_column: str | None = "label", keep_ids: bool = False):
        self.pad_id = pad_id
        self.label_column = label_column
        self.keep_ids = keep_ids

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        out = pad_batch(batch, self.pad_id, self.label_column)
        if self.keep_ids:
            out["ids"] = batch["id"].tolist()
        return out


_STAGES: dict[tuple, TokenizeBatch] = {}


def tokenize_texts(batch: pa.Table, tokenizer_path: str, text_column: str, max_length: int,
                   keep_columns: Sequence[str] = (), pair_column: str | None = None,
                   serialized: str | None = None, batch_rows: int | None = None) -> pa.Table:
    """``TokenizeBatch`` as a function for task-based ``map_batches``, ``batch_rows`` rows per tokenizer call.

    Ray reuses warm worker processes for tasks, whereas an actor pool is started again for every
    dataset execution (each epoch and each evaluation); the tokenizer is loaded once per process.
    ``batch_rows`` cuts a whole block here, for a stage that Ray Data must not batch itself (it fuses a read
    into the next map only when that map asks for no batch size).
    """
    key = (tokenizer_path, text_column, max_length, tuple(keep_columns), pair_column)
    stage = _STAGES.get(key)
    if stage is None:
        _STAGES.clear()
        stage = _STAGES[key] = TokenizeBatch(*key, serialized=serialized)
    if batch_rows is None or batch.num_rows <= batch_rows:
        return stage(batch)
    return pa.concat_tables([stage(batch.slice(start, batch_rows)) for start in range(0, batch.num_rows, batch_rows)])


def pad_batch(batch: dict[str, np.ndarray], pad_id: int = 0,
              label_column: str | None = "label") -> dict[str, torch.Tensor]:
    """Collate a numpy batch of ragged ``input_ids`` into padded tensors.

    Returns ``input_ids`` and ``attention_mask`` of shape (B, T_max) where T_max is the longest
    row of this batch, ``token_type_ids`` (B, T_max) for sentence pairs, plus ``labels`` (B,)
    when ``label_column`` is present.
    """
    import torch

    rows = batch["input_ids"]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : lengths[i]] = row
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    out = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
    if "token_type_ids" in batch:
        token_types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(batch["token_type_ids"]):
            token_types[i, : lengths[i]] = row
        out["token_type_ids"] = torch.from_numpy(token_types)
    if label_column is not None and label_column in batch:
        out["labels"] = torch.from_numpy(np.array(batch[label_column], dtype=np.int64))  # a writable copy
    return out
