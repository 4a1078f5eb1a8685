"""Batches of a Ray Train worker's dataset shard, optionally grouped by length to cut padding."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def iterate_shard(shard, batch_size: int, collate, seed: int, epoch: int, shuffle: bool,
                  shuffle_buffer_rows: int, group_by_length: int = 0) -> Iterator[dict[str, Any]]:
    """Batches of a worker's dataset shard.

    ``group_by_length > 1`` reads that many batches' worth of rows at a time, sorts them by
    ``num_tokens`` and cuts batches from the sorted rows (in shuffled order), so each batch pads
    to a similar length. The number of batches depends only on the shard's row count, so
    workers with equal shards still take the same number of DDP steps.
    """
    kwargs: dict[str, Any] = {}
    if shuffle and shuffle_buffer_rows > 0:
        kwargs = {"local_shuffle_buffer_size": shuffle_buffer_rows, "local_shuffle_seed": seed + epoch}
    if group_by_length <= 1:
        return shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=False,
                                        prefetch_batches=2, **kwargs)
    return length_grouped(shard.iter_batches(batch_size=batch_size * group_by_length, batch_format="numpy",
                                             prefetch_batches=1, **kwargs),
                          batch_size, collate, np.random.default_rng(seed * 1_000_003 + epoch))


def length_grouped(chunks: Iterable[dict[str, np.ndarray]], batch_size: int, collate,
                   rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """Within each chunk of rows: sort by ``num_tokens``, cut batches, yield them in random order."""
    for chunk in chunks:
        order = np.argsort(chunk["num_tokens"], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for index in rng.permutation(len(batches)):
            rows = batches[index]
            yield collate({key: values[rows] for key, values in chunk.items()})
