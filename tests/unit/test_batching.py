"""Length grouping: batches of similar lengths, every row once, the same order for the same seed."""

from __future__ import annotations

import numpy as np

from data_pipeline.batching import length_grouped


def _chunks(lengths: list[int], chunk_rows: int):
    ids = np.arange(len(lengths))
    tokens = np.array(lengths)
    return [{"id": ids[i:i + chunk_rows], "num_tokens": tokens[i:i + chunk_rows]}
            for i in range(0, len(lengths), chunk_rows)]


def _collate(rows):
    return {key: list(values) for key, values in rows.items()}


def test_each_batch_is_cut_from_length_sorted_rows_and_every_row_comes_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=64).tolist()
    batches = list(length_grouped(_chunks(lengths, 32), batch_size=8, collate=_collate,
                                  rng=np.random.default_rng(7)))
    assert len(batches) == 8 and all(len(b["id"]) == 8 for b in batches)
    assert sorted(i for b in batches for i in b["id"]) == list(range(64))
    for chunk_start in (0, 32):  # within a chunk, the batches partition its sorted order
        chunk = [b for b in batches if b["id"][0] // 32 * 32 == chunk_start]
        spans = sorted((min(b["num_tokens"]), max(b["num_tokens"])) for b in chunk)
        assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))
    # padding per batch (to its longest row) is far below a random batching's
    padded = sum(max(b["num_tokens"]) * len(b["id"]) for b in batches)
    shuffled = np.array(lengths)[rng.permutation(64)].reshape(8, 8)
    assert padded < 0.8 * shuffled.max(axis=1).sum() * 8


def test_the_same_seed_gives_the_same_batches_and_a_last_short_batch_is_kept():
    lengths = list(range(20, 0, -1))
    first = list(length_grouped(_chunks(lengths, 20), 6, _collate, np.random.default_rng(3)))
    again = list(length_grouped(_chunks(lengths, 20), 6, _collate, np.random.default_rng(3)))
    assert first == again
    assert sorted(len(b["id"]) for b in first) == [2, 6, 6, 6]
