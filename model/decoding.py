"""Batched greedy and beam-search decoding for ``Seq2SeqTransformer``, with a KV cache.

Outputs are LongTensors (B, L) of generated ids without the leading bos; each row stops at
its eos and is padded with pad_id afterwards; L <= max_len. pad and bos are never generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .transformer import Seq2SeqConfig, Seq2SeqTransformer


@contextmanager
def _eval_mode(model: Seq2SeqTransformer) -> Iterator[None]:
    """Decode without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_max_len(cfg: Seq2SeqConfig, max_len: int) -> None:
    # The last generated token is never fed back, so max_len tokens need max_len positions.
    if not 1 <= max_len <= cfg.max_len:
        raise ValueError(f"max_len must be in [1, {cfg.max_len}] (the model's max_len), got {max_len}")


def _next_token_logprobs(logits: Tensor, cfg: Seq2SeqConfig) -> Tensor:
    """(N, V) logits -> log-probabilities over the tokens that may be generated (not pad, not bos)."""
    forbidden = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
    forbidden[[cfg.pad_id, cfg.bos_id]] = True
    return logits.float().masked_fill(forbidden, float("-inf")).log_softmax(dim=-1)


def gnmt_length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha; alpha = 0 scores by raw log-probability."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


def _trim_trailing_pad(ids: Tensor, pad_id: int) -> Tensor:
    """Drop columns at the end that are pad in every row (beams that finished early)."""
    used = (ids != pad_id).any(dim=0).nonzero()  # (n, 1) indices of columns with a real token
    return ids[:, : int(used.max()) + 1] if used.numel() else ids[:, :0]


@torch.inference_mode()
def greedy_decode(
    model: Seq2SeqTransformer,
    src_ids: Tensor,
    max_len: int,
    use_cache: bool = True,
    return_attention: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """src_ids (B, S) -> generated ids (B, L).

    ``use_cache=False`` re-runs the decoder over the whole prefix at every step (the O(L^2)
    baseline the cached path is benchmarked against). With ``return_attention`` also returns the
    last decoder layer's head-averaged cross-attention (B, L, S): row i is the attention used to
    predict token i.
    """
    cfg = model.config
    _check_max_len(cfg, max_len)
    B, device = src_ids.size(0), src_ids.device
    with _eval_mode(model):
        memory, src_mask = model.encode(src_ids)  # (B, S, D), (B, 1, 1, S)
        ys = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=device)  # (B, 1 + t)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        cache = model.new_cache() if use_cache else None
        attention: list[Tensor] = []
        for _ in range(max_len):
            if cache is not None:
                logits, weights = model.decode_step(ys[:, -1:], memory, src_mask, cache, need_weights=return_attention)
            else:
                logits, weights = model.decode(ys, memory, src_mask, need_weights=return_attention)
            next_ids = _next_token_logprobs(logits[:, -1], cfg).argmax(dim=-1)  # (B,)
            next_ids = next_ids.masked_fill(finished, cfg.pad_id)
            ys = torch.cat([ys, next_ids[:, None]], dim=1)
            if weights is not None:
                attention.append(weights[:, -1])  # (B, S)
            finished |= next_ids == cfg.eos_id
            if finished.all():
                break
    out = ys[:, 1:]
    if return_attention:
        return out, torch.stack(attention, dim=1)  # (B, L, S)
    return out


@torch.inference_mode()
def beam_search(
    model: Seq2SeqTransformer,
    src_ids: Tensor,
    beam_size: int,
    max_len: int,
    length_penalty: float = 0.6,
    return_scores: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """src_ids (B, S) -> best hypothesis per source (B, L) by log P(Y) / gnmt_length_penalty(|Y|).

    |Y| counts generated tokens including eos. A finished beam stays in the beam, extended
    only by pad at zero cost, and competes with its final score; decoding stops when every beam
    is finished or after max_len tokens. ``return_scores`` also returns the best scores (B,).
    """
    cfg = model.config
    _check_max_len(cfg, max_len)
    V = cfg.tgt_vocab_size
    if not 1 <= beam_size <= V - 2:  # step 0 needs beam_size distinct allowed tokens
        raise ValueError(f"beam_size must be in [1, {V - 2}], got {beam_size}")
    B, K, device = src_ids.size(0), beam_size, src_ids.device
    with _eval_mode(model):
        memory, src_mask = model.encode(src_ids)
        # Beams of one source are adjacent rows: row b * K + k.
        memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, D)
        src_mask = src_mask.repeat_interleave(K, dim=0)  # (B*K, 1, 1, S)
        cache = model.new_cache()
        tokens = torch.full((B * K, 1), cfg.bos_id, dtype=torch.long, device=device)  # (B*K, 1 + t)
        scores = torch.zeros(B, K, device=device)  # raw log P of each beam
        scores[:, 1:] = float("-inf")  # all beams start identical: keep one alive to avoid duplicates
        lengths = torch.zeros(B * K, dtype=torch.long, device=device)
        finished = torch.zeros(B * K, dtype=torch.bool, device=device)
        pad_only = torch.full((V,), float("-inf"), device=device)
        pad_only[cfg.pad_id] = 0.0
        row_base = torch.arange(B, device=device)[:, None] * K  # (B, 1)
        for step in range(max_len):
            logits, _ = model.decode_step(tokens[:, -1:], memory, src_mask, cache)
            logp = _next_token_logprobs(logits[:, -1], cfg)  # (B*K, V)
            logp = torch.where(finished[:, None], pad_only, logp)
            cand = scores.view(-1, 1) + logp  # (B*K, V)
            cand_len = torch.where(finished, lengths, step + 1)  # (B*K,)
            ranked = cand / gnmt_length_penalty(cand_len, length_penalty)[:, None]
            _, idx = ranked.view(B, K * V).topk(K, dim=-1)  # (B, K)
            parent = (row_base + idx // V).view(-1)  # (B*K,) row each new beam extends
            new_ids = (idx % V).view(-1)  # (B*K,)
            scores = cand.view(B, K * V).gather(1, idx)
            lengths = cand_len[parent]
            finished = finished[parent] | (new_ids == cfg.eos_id)
            tokens = torch.cat([tokens[parent], new_ids[:, None]], dim=1)
            cache.reorder(parent)
            if finished.all():
                break
        final = (scores.view(-1) / gnmt_length_penalty(lengths, length_penalty)).view(B, K)
        best_scores, best = final.max(dim=-1)  # (B,)
        out = tokens.view(B, K, -1)[torch.arange(B, device=device), best, 1:]
    out = _trim_trailing_pad(out, cfg.pad_id)
    return (out, best_scores) if return_scores else out


@torch.inference_mode()
def sequence_scores(
    model: Seq2SeqTransformer, src_ids: Tensor, generated: Tensor, length_penalty: float = 0.0
) -> Tensor:
    """Score decoded outputs (B, L) by teacher forcing, under the rules the decoders use:
    sum of log-probs up to and including eos / gnmt_length_penalty. Returns (B,).

    No job calls it: it is the reference the tests check beam search's scores (tests/unit/test_decoding.py)
    and the GPU's (tests/gpu/test_gpu_seq2seq.py) against."""
    cfg = model.config
    B, L = generated.shape
    with _eval_mode(model):
        bos = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=generated.device)
        logits = model(src_ids, torch.cat([bos, generated[:, :-1]], dim=1))  # (B, L, V)
        logp = _next_token_logprobs(logits.flatten(0, 1), cfg).view(B, L, -1)
        token_logp = logp.gather(-1, generated[..., None]).squeeze(-1)  # (B, L)
        real = generated != cfg.pad_id
        total = token_logp.masked_fill(~real, 0.0).sum(dim=1)
    return total / gnmt_length_penalty(real.sum(dim=1), length_penalty)
