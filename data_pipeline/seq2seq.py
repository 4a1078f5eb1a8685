"""Seq2seq data: word-level tokenizers for each side, a Ray Data tokenize stage, and token-budget batches.

Tokenizers (Hugging Face ``tokenizers``, trained on the train split): the source side is
character-level (NFKC, whitespace and control characters removed, one token per character); the
target side is word-level over space-separated tokens (pinyin syllables). Both reserve
``<pad> <s> </s> <unk>`` at ids 0/1/2/3, the ``Seq2SeqConfig`` defaults.

Batching: rows are read from a worker's shard in windows of ``window_rows``; each window is sorted
by length and cut into batches of at most ``max_rows`` rows and ``max_tokens`` padded tokens
(rows x the longer of source and target-with-bos/eos), then the batch order is shuffled. For
training under DDP every worker must take the same number of steps: an ``agree`` callback (an
all-reduce max in the job) makes the workers agree, window by window, on the batch count, and
workers with fewer batches split their biggest ones (no row dropped or repeated).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from data_pipeline.text_limits import cut_texts, max_chars

if TYPE_CHECKING:
    import torch  # imported where used: the tokenize stage's processes never need it (data_pipeline.tokenization)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def _new_tokenizer(normalizer, pre_tokenizer) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    return tokenizer


def _train(tokenizer: Tokenizer, texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {i}")
    return tokenizer


def train_source_tokenizer(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 1) -> Tokenizer:
    """Character-level: NFKC, whitespace/control characters removed, every character one token."""
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"[\s\p{C}]+"), "")])
    pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return _train(_new_tokenizer(normalizer, pre_tokenizer), texts, vocab_size, min_frequency)


def train_target_tokenizer(texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 1) -> Tokenizer:
    """Word-level over whitespace-separated tokens."""
    return _train(_new_tokenizer(None, pre_tokenizers.WhitespaceSplit()), texts, vocab_size, min_frequency)


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Ids without specials (no bos/eos), one list per text."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


class TokenizePairs:
    """Callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``.

    Tokenizers arrive as JSON strings (no shared filesystem needed on a cluster). Output columns:
    ``id``, ``source``, ``target`` (the texts, kept for decode metrics), ``src_ids`` and ``tgt_ids``
    (list<int32>, no specials). With ``max_len`` (the model's), each text is first cut to
    ``max_chars(max_len)`` characters (``data_pipeline.text_limits``): the driver refuses such rows
    before training, so this only bounds the work a row changed since then can cost.
    """

    def __init__(self, source_tokenizer_json: str, target_tokenizer_json: str, source_column: str,
                 target_column: str, max_len: int | None = None):
        self.source = Tokenizer.from_str(source_tokenizer_json)
        self.target = Tokenizer.from_str(target_tokenizer_json)
        self.source_column = source_column
        self.target_column = target_column
        self.max_chars = None if max_len is None else max_chars(max_len)

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch.column(self.source_column).to_pylist()
        targets = batch.column(self.target_column).to_pylist()
        if self.max_chars is not None:
            sources, targets = cut_texts(sources, self.max_chars)[0], cut_texts(targets, self.max_chars)[0]
        return pa.table({
            "id": batch.column("id"),
            "source": pa.array(sources, type=pa.string()),
            "target": pa.array(targets, type=pa.string()),
            "src_ids": pa.array(encode(self.source, sources), type=pa.list_(pa.int32())),
            "tgt_ids": pa.array(encode(self.target, targets), type=pa.list_(pa.int32())),
        })


_STAGES: dict[tuple, TokenizePairs] = {}


def tokenize_pairs(batch: pa.Table, source_tokenizer_json: str, target_tokenizer_json: str, source_column: str,
                   target_column: str, max_len: int | None = None) -> pa.Table:
    """``TokenizePairs`` as a function for task-based ``map_batches``: Ray reuses warm worker processes
    instead of starting an actor per dataset execution; tokenizers are parsed once per process."""
    key = (source_tokenizer_json, target_tokenizer_json, source_column, target_column, max_len)
    stage = _STAGES.get(key)
    if stage is None:
        _STAGES.clear()
        stage = _STAGES[key] = TokenizePairs(*key)
    return stage(batch)


# --------------------------------------------------------------------------- batching


def row_cost(src_len: int, tgt_len: int) -> int:
    """Padded positions a row needs: the longer of its source and its target plus bos/eos."""
    return max(src_len, tgt_len + 1)


def plan_batches(costs: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices of ``costs`` grouped into batches: sorted by cost, each batch's rows x max cost <= max_tokens.

    A single row costlier than ``max_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending: the new row sets the batch's padded width
        if current and ((len(current) + 1) * costs[i] > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def split_to_count(batches: list[list[int]], count: int) -> list[list[int]]:
    """Reach exactly ``count`` batches by halving the biggest ones (repeating batches only if all are single rows)."""
    if count < len(batches):
        raise ValueError(f"cannot reduce {len(batches)} batches to {count}")
    if not batches and count:
        raise ValueError("no rows to make batches from")
    out = [list(b) for b in batches]
    while len(out) < count:
        biggest = max(range(len(out)), key=lambda i: len(out[i]))
        if len(out[biggest]) < 2:
            out.append(list(out[len(out) % len(batches)]))  # only reachable with fewer rows than peers
            continue
        batch = out.pop(biggest)
        half = len(batch) // 2
        out[biggest:biggest] = [batch[:half], batch[half:]]
    return out


def collate_pairs(src_rows: Sequence[Sequence[int]], tgt_rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Pad one batch: ``src_ids`` (B, S), ``tgt_in`` = <s> + target (B, T+1), ``tgt_out`` = target + </s> (B, T+1)."""
    import torch

    B = len(src_rows)
    S = max(len(r) for r in src_rows)
    T = max(len(r) for r in tgt_rows) + 1
    src = np.full((B, S), PAD_ID, dtype=np.int64)
    tgt_in = np.full((B, T), PAD_ID, dtype=np.int64)
    tgt_out = np.full((B, T), PAD_ID, dtype=np.int64)
    for i, (s, t) in enumerate(zip(src_rows, tgt_rows)):
        src[i, :len(s)] = s
        tgt_in[i, 0] = BOS_ID
        tgt_in[i, 1:len(t) + 1] = t
        tgt_out[i, :len(t)] = t
        tgt_out[i, len(t)] = EOS_ID
    return {"src_ids": torch.from_numpy(src), "tgt_in": torch.from_numpy(tgt_in), "tgt_out": torch.from_numpy(tgt_out)}


def _batch_dict(window: dict[str, np.ndarray], rows: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = collate_pairs([window["src_ids"][i] for i in rows], [window["tgt_ids"][i] for i in rows])
    out["ids"] = [str(window["id"][i]) for i in rows]
    out["sources"] = [str(window["source"][i]) for i in rows]
    out["targets"] = [str(window["target"][i]) for i in rows]
    return out


def token_budget_batches(windows: Iterable[dict[str, np.ndarray]], max_tokens: int, max_rows: int, seed: int,
                         shuffle: bool, agree: Callable[[bool, int], tuple[bool, int]] | None = None
                         ) -> Iterator[dict[str, Any]]:
    """Length-bucketed batches from windows of rows (numpy batches with id/source/target/src_ids/tgt_ids).

    ``agree(has_window, n_batches) -> (any_worker_has_window, max_n_batches)`` is the collective
    that keeps the step count equal across DDP workers; None (evaluation, a single process) skips it.
    A worker whose shard ran out while a peer still has a window replays its last window (Ray's
    equal split makes this a safety net, not a path taken).
    """
    rng = np.random.default_rng(seed)
    iterator = iter(windows)
    last: dict[str, np.ndarray] | None = None
    while True:
        window = next(iterator, None)
        plan = None
        if window is not None:
            costs = [row_cost(len(s), len(t)) for s, t in zip(window["src_ids"], window["tgt_ids"])]
            plan = plan_batches(costs, max_tokens, max_rows)
        if agree is not None:
            any_left, count = agree(window is not None, len(plan) if plan else 0)
            if not any_left:
                return
            if window is None:
                if last is None:
                    raise RuntimeError("this worker's training shard is empty while others still have rows")
                window = last
                costs = [row_cost(len(s), len(t)) for s, t in zip(window["src_ids"], window["tgt_ids"])]
                plan = plan_batches(costs, max_tokens, max_rows)
            plan = split_to_count(plan, count)
        elif window is None:
            return
        if shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        for rows in plan:
            yield _batch_dict(window, rows)
        last = window


def estimate_batches_per_worker(costs: Sequence[int], world: int, window_rows: int, max_tokens: int,
                                max_rows: int, seed: int = 0) -> int:
    """Batches one worker takes per epoch, simulated on a random equal share of the rows (for the LR schedule)."""
    rng = np.random.default_rng(seed)
    share = [costs[i] for i in rng.permutation(len(costs))[:len(costs) // max(world, 1)]]
    return sum(len(plan_batches(share[i:i + window_rows], max_tokens, max_rows))
               for i in range(0, len(share), window_rows)) or 1
