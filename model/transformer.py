"""Encoder-decoder Transformer ("Attention Is All You Need"), batch-first, pure torch.

Shapes: B batch, S source length, T target length, D d_model, H heads, Dh = D // H,
V vocabulary size. Boolean attention masks use True = "may attend" (the
``scaled_dot_product_attention`` convention) and broadcast to (B, H, Tq, Tk).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class Seq2SeqArchitecture:
    """The model's shape: what a job's config sets (vocabulary sizes come from the trained tokenizers)."""
    d_model: int = 256  # width of the embeddings and of every layer
    n_heads: int = 4  # attention heads; d_model must be a multiple of it
    d_ff: int = 1024  # hidden width of each feed-forward block
    n_encoder_layers: int = 3  # encoder blocks
    n_decoder_layers: int = 3  # decoder blocks
    dropout: float = 0.1  # dropout probability in every layer and on the embeddings
    max_len: int = 128  # positions: the longest source, and the longest target + 1
    norm_first: bool = True  # pre-LN (stable without warm-up) vs the paper's post-LN
    tie_target_embeddings: bool = True  # decoder input embedding == output projection weight

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name}.{f.name}: expected an int, got {value!r}")
            if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name}.{f.name}: expected a number, got {value!r}")
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"{name}.{f.name}: expected a bool, got {value!r}")
        for field_name in ("d_model", "n_heads", "d_ff", "n_encoder_layers", "n_decoder_layers", "max_len"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{name}.{field_name} must be positive, got {getattr(self, field_name)}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"{name}.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_model % 2 != 0:  # sinusoidal encoding interleaves sin/cos pairs
            raise ValueError(f"{name}.d_model must be even, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")

    def with_vocab(self, src_vocab_size: int, tgt_vocab_size: int) -> Seq2SeqConfig:
        shape = {f.name: getattr(self, f.name) for f in dataclasses.fields(Seq2SeqArchitecture)}
        return Seq2SeqConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **shape)


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig(Seq2SeqArchitecture):
    """A buildable model: the shape plus the vocabularies and special token ids."""
    src_vocab_size: int
    tgt_vocab_size: int
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Seq2SeqConfig.{name} must be positive, got {getattr(self, name)}")
        # pad is used on both sides; bos/eos only in the target vocabulary.
        limits = {"pad_id": min(self.src_vocab_size, self.tgt_vocab_size),
                  "bos_id": self.tgt_vocab_size, "eos_id": self.tgt_vocab_size}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not 0 <= value < limit:
                raise ValueError(f"Seq2SeqConfig.{name} ({value}) must be in [0, {limit})")
        if len({self.pad_id, self.bos_id, self.eos_id}) != 3:
            raise ValueError(
                f"Seq2SeqConfig.pad_id/bos_id/eos_id must be distinct, got "
                f"{self.pad_id}/{self.bos_id}/{self.eos_id}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seq2SeqConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Seq2SeqConfig: unknown keys {unknown}")
        return cls(**data)


# --------------------------------------------------------------------------- masks


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(B, T) ids -> (B, 1, 1, T) bool, True for real tokens (keys that may be attended)."""
    return (ids != pad_id)[:, None, None, :]


def causal_mask(T: int, device: torch.device | str | None = None, past_len: int = 0) -> Tensor:
    """(1, 1, T, past_len + T) bool: query i (at absolute position past_len + i) sees keys <= itself.

    ``past_len`` > 0 is for feeding several new tokens on top of a KV cache.
    """
    q_pos = torch.arange(past_len, past_len + T, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(past_len + T, device=device)[None, :]  # (1, past+T)
    return (k_pos <= q_pos)[None, None]


# --------------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Projected keys/values of one attention module, each (B, H, T, Dh).

    ``static`` caches (cross-attention) are filled once from the encoder memory and reused;
    the others (decoder self-attention) grow by the new tokens on every step.
    """

    static: bool = False
    k: Tensor | None = None
    v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is not None and not self.static:
            k = torch.cat([self.k, k], dim=2)  # (B, H, T_past + T_new, Dh)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the caches of the surviving beams)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@dataclass
class DecoderCache:
    """Per-layer caches for incremental decoding; ``length`` = tokens already fed (position offset)."""

    self_kv: list[KVCache]
    cross_kv: list[KVCache]
    length: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> DecoderCache:
        return cls(self_kv=[KVCache() for _ in range(n_layers)],
                   cross_kv=[KVCache(static=True) for _ in range(n_layers)])

    def reorder(self, index: Tensor) -> None:
        for cache in (*self.self_kv, *self.cross_kv):
            cache.reorder(index)


# --------------------------------------------------------------------------- modules


class SinusoidalPositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (T_max, 1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * inv_freq)
        pe[:, 1::2] = torch.cos(position * inv_freq)
        # Not persistent: a deterministic function of the config, so keep it out of checkpoints.
        self.register_buffer("pe", pe[None], persistent=False)  # (1, T_max, D)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: (B, T, D) -> x + PE[offset : offset + T]."""
        end = offset + x.size(1)
        if end > self.max_len:
            raise ValueError(f"sequence needs positions up to {end} but max_len is {self.max_len}")
        return x + self.pe[:, offset:end]


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.scale = math.sqrt(d_model)  # keeps embeddings on the scale of the positional encoding

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids) * self.scale  # (B, T) -> (B, T, D)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head, self.dropout = n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor,
        mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        need_weights: bool = False,
        average_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """query (B, Tq, D), key_value (B, Tk, D), mask bool broadcastable to (B, 1, Tq, Tk).

        Returns the output (B, Tq, D) and, if ``need_weights``, the attention probabilities
        (B, Tq, Tk) averaged over heads or (B, H, Tq, Tk) per head.
        """
        B, Tq, D = query.shape
        q = self._split_heads(self.q_proj(query))  # (B, H, Tq, Dh)
        if cache is not None and cache.static and cache.k is not None:
            k, v = cache.k, cache.v  # cross-attention: memory was projected on the first step
        else:
            k = self._split_heads(self.k_proj(key_value))  # (B, H, Tk, Dh)
            v = self._split_heads(self.v_proj(key_value))
            if cache is not None:
                k, v = cache.update(k, v)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # explicit path: the fused kernel does not expose the probabilities
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, Tq, Tk)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p) @ v  # (B, H, Tq, Dh)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Tq, D))  # (B, Tq, D)
        if weights is not None and average_weights:
            weights = weights.mean(dim=1)  # (B, Tq, Tk)
        return out, weights


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))  # (B, T, D)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, S, D), mask (B, 1, 1, S)."""
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, mask)[0])
            x = x + self.dropout(self.ffn(self.norm2(x)))
        else:
            x = self.norm1(x + self.dropout(self.self_attn(x, x, mask)[0]))
            x = self.norm2(x + self.dropout(self.ffn(x)))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D), memory (B, S, D), self_mask (1, 1, T, T_total) or None, cross_mask (B, 1, 1, S).

        Returns (B, T, D) and the head-averaged cross-attention (B, T, S) if ``need_weights``.
        """
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, self_mask, cache=self_cache)[0])
            a, w = self.cross_attn(self.norm2(x), memory, cross_mask, cache=cross_cache, need_weights=need_weights)
            x = x + self.dropout(a)
            x = x + self.dropout(self.ffn(self.norm3(x)))
        else:
            x = self.norm1(x + self.dropout(self.self_attn(x, x, self_mask, cache=self_cache)[0]))
            a, w = self.cross_attn(x, memory, cross_mask, cache=cross_cache, need_weights=need_weights)
            x = self.norm2(x + self.dropout(a))
            x = self.norm3(x + self.dropout(self.ffn(x)))
        return x, w


def _final_norm(cfg: Seq2SeqConfig) -> nn.Module:
    # Pre-LN leaves the residual stream un-normalised; post-LN layers already end in a norm.
    return nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.embed = TokenEmbedding(cfg.src_vocab_size, cfg.d_model)
        self.pos = SinusoidalPositionalEncoding(cfg.d_model, cfg.max_len)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.norm = _final_norm(cfg)

    def forward(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """src_ids (B, S), src_mask (B, 1, 1, S) -> memory (B, S, D)."""
        x = self.dropout(self.pos(self.embed(src_ids)))
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.embed = TokenEmbedding(cfg.tgt_vocab_size, cfg.d_model)
        self.pos = SinusoidalPositionalEncoding(cfg.d_model, cfg.max_len)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = _final_norm(cfg)

    def forward(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        cross_mask: Tensor,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """tgt_ids (B, T) -> hidden (B, T, D) and the last layer's cross-attention (B, T, S) or None."""
        offset = cache.length if cache is not None else 0
        x = self.dropout(self.pos(self.embed(tgt_ids), offset))  # (B, T, D)
        weights = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, w = layer(
                x, memory, self_mask, cross_mask,
                self_cache=cache.self_kv[i] if cache is not None else None,
                cross_cache=cache.cross_kv[i] if cache is not None else None,
                need_weights=need_weights and i == last,
            )
            weights = w if w is not None else weights
        if cache is not None:
            cache.length += tgt_ids.size(1)
        return self.norm(x), weights


class Seq2SeqTransformer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.output_proj = nn.Linear(cfg.d_model, cfg.tgt_vocab_size)
        self._init_weights()
        if cfg.tie_target_embeddings:
            self.output_proj.weight = self.decoder.embed.embedding.weight

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                # std 1/sqrt(D): unit-variance after the sqrt(D) scaling, and unit-scale logits when tied.
                nn.init.normal_(m.weight, std=self.config.d_model ** -0.5)

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """src_ids (B, S) -> memory (B, S, D), src_mask (B, 1, 1, S)."""
        src_mask = padding_mask(src_ids, self.config.pad_id)
        return self.encoder(src_ids, src_mask), src_mask

    def decode(
        self, tgt_in_ids: Tensor, memory: Tensor, src_mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Full (uncached) decoder pass: (B, T) -> logits (B, T, V), cross-attention (B, T, S) or None.

        Only the causal mask is applied on the target side: targets are right-padded, so a pad
        can never be seen by an earlier real token, and pad positions are ignored by the loss.
        """
        tgt_mask = causal_mask(tgt_in_ids.size(1), tgt_in_ids.device)  # (1, 1, T, T)
        h, weights = self.decoder(tgt_in_ids, memory, tgt_mask, src_mask, need_weights=need_weights)
        return self.output_proj(h), weights

    def new_cache(self) -> DecoderCache:
        return DecoderCache.empty(self.config.n_decoder_layers)

    def decode_step(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        cache: DecoderCache,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Feed the new tokens (B, T_new) (usually T_new = 1) on top of ``cache``, which is updated.

        Returns logits (B, T_new, V) and cross-attention (B, T_new, S) or None.
        """
        T_new = tgt_ids.size(1)
        # A single new token may attend to every cached position: no mask needed.
        self_mask = None if T_new == 1 else causal_mask(T_new, tgt_ids.device, past_len=cache.length)
        h, weights = self.decoder(tgt_ids, memory, self_mask, src_mask, cache=cache, need_weights=need_weights)
        return self.output_proj(h), weights

    def forward(self, src_ids: Tensor, tgt_in_ids: Tensor) -> Tensor:
        """src_ids (B, S), tgt_in_ids (B, T) (bos-prefixed) -> logits (B, T, V_tgt)."""
        memory, src_mask = self.encode(src_ids)
        return self.decode(tgt_in_ids, memory, src_mask)[0]


def sequence_loss(logits: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Token-level cross-entropy averaged over non-pad targets. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )
