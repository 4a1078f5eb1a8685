"""Save and load a trained ``Seq2SeqTransformer`` with its tokenizers, and turn texts into texts.

An export directory holds::

    model.safetensors        weights (tied embeddings stored once)
    seq2seq_config.json      Seq2SeqConfig.to_dict()
    source_tokenizer.json    Hugging Face ``tokenizers`` files, specials <pad> <s> </s> <unk> = 0..3
    target_tokenizer.json

Pure torch + tokenizers + safetensors: no Ray, no MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer

from .decoding import beam_search, greedy_decode
from .transformer import Seq2SeqConfig, Seq2SeqTransformer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "seq2seq_config.json"
SOURCE_TOKENIZER_FILE = "source_tokenizer.json"
TARGET_TOKENIZER_FILE = "target_tokenizer.json"


@dataclass
class LoadedSeq2Seq:
    model: Seq2SeqTransformer
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer

    @property
    def config(self) -> Seq2SeqConfig:
        return self.model.config


def save_seq2seq(model: Seq2SeqTransformer, source_tokenizer: Tokenizer, target_tokenizer: Tokenizer,
                 directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))  # handles the tied (shared) embedding tensor
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
    source_tokenizer.save(str(directory / SOURCE_TOKENIZER_FILE))
    target_tokenizer.save(str(directory / TARGET_TOKENIZER_FILE))
    return directory


def load_seq2seq(directory: str | Path, device: str | torch.device = "cpu") -> LoadedSeq2Seq:
    directory = Path(directory)
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE, SOURCE_TOKENIZER_FILE, TARGET_TOKENIZER_FILE)
               if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: not a seq2seq export (missing {', '.join(missing)})")
    config = Seq2SeqConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = Seq2SeqTransformer(config)
    load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
    model.to(device).eval()
    return LoadedSeq2Seq(model, Tokenizer.from_file(str(directory / SOURCE_TOKENIZER_FILE)),
                         Tokenizer.from_file(str(directory / TARGET_TOKENIZER_FILE)))


def encode_sources(tokenizer: Tokenizer, texts: Sequence[str], pad_id: int, max_len: int) -> torch.Tensor:
    """(B, S) right-padded source ids; sources longer than ``max_len`` tokens are cut to it."""
    rows = [e.ids[:max_len] for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    width = max((len(r) for r in rows), default=0) or 1
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def ids_to_tokens(ids: Sequence[int], tokenizer: Tokenizer, config: Seq2SeqConfig) -> list[str]:
    """Generated ids -> tokens: stop at eos, drop pad/bos, keep ``<unk>`` (it holds a position)."""
    out = []
    for i in ids:
        i = int(i)
        if i == config.eos_id:
            break
        if i in (config.pad_id, config.bos_id):
            continue
        out.append(tokenizer.id_to_token(i))
    return out


def encode_source_ids(loaded: LoadedSeq2Seq, texts: Sequence[str]) -> list[list[int]]:
    """Source token ids of each text, uncut (``generate_from_ids`` cuts them to the model's ``max_len``)."""
    return [e.ids for e in loaded.source_tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)]


@torch.inference_mode()
def generate_from_ids(loaded: LoadedSeq2Seq, encoded: Sequence[Sequence[int]], beam_size: int = 1,
                      max_len: int | None = None, batch_size: int = 64,
                      length_penalty: float = 0.6) -> list[list[str]]:
    """Decode each source id list into target tokens (greedy when ``beam_size`` is 1), in input order.

    A source with no token (an empty or whitespace-only text) decodes to no tokens.
    """
    config = loaded.config
    max_len = min(max_len or config.max_len, config.max_len)
    device = next(loaded.model.parameters()).device
    encoded = [list(ids[:config.max_len]) for ids in encoded]
    order = sorted((i for i in range(len(encoded)) if encoded[i]), key=lambda i: len(encoded[i]))
    results: list[list[str]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]  # similar lengths share a batch
        src = torch.full((len(chunk), len(encoded[chunk[-1]])), config.pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            src[row, :len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
        src = src.to(device)
        if beam_size > 1:
            generated = beam_search(loaded.model, src, beam_size=beam_size, max_len=max_len,
                                    length_penalty=length_penalty)
        else:
            generated = greedy_decode(loaded.model, src, max_len=max_len)
        for i, row in zip(chunk, generated.tolist()):
            results[i] = ids_to_tokens(row, loaded.target_tokenizer, config)
    return results


def generate_tokens(loaded: LoadedSeq2Seq, texts: Sequence[str], **kwargs) -> list[list[str]]:
    """Decode each source text into target tokens, in input order (see ``generate_from_ids``)."""
    return generate_from_ids(loaded, encode_source_ids(loaded, texts), **kwargs)


def generate(loaded: LoadedSeq2Seq, texts: Sequence[str], **kwargs) -> list[str]:
    """Decode each source text into a target text (tokens joined by spaces)."""
    return [" ".join(tokens) for tokens in generate_tokens(loaded, texts, **kwargs)]
