"""BERT-style sequence classifiers (MiniRBT-H256 by default), loaded through transformers.

The same ``load_classifier`` serves a hub id (``hfl/minirbt-h256`` where the hub is reachable)
and a local directory written by ``save_pretrained``. Offline, ``build_random_classifier``
creates that directory from the public MiniRBT-H256 config with random weights and the
bert-base-chinese WordPiece vocabulary.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertTokenizerFast, PreTrainedModel,
                          PreTrainedTokenizerBase)

HUB_ID = "hfl/minirbt-h256"


@dataclass(frozen=True)
class LoadedClassifier:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def label_names(self) -> list[str]:
        id2label = self.model.config.id2label
        return [id2label[i] for i in range(len(id2label))]


def bundled_chinese_vocab() -> Path:
    """The 21,128-token bert-base-chinese vocab.txt shipped inside the cn-clip package.

    Located without importing cn_clip (installed with --no-deps, its imports would fail).
    """
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the cn-clip package is not installed: pip install --no-deps cn-clip==1.6.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "clip" / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the cn-clip package")
    return path


def chinese_bert_tokenizer(vocab_path: Path, model_max_length: int = 512) -> BertTokenizerFast:
    # BertTokenizerFast(vocab_file=...) silently builds a 5-token vocabulary in transformers 5:
    # pass the vocabulary as a mapping instead.
    tokens = vocab_path.read_text(encoding="utf-8").rstrip("\n").split("\n")  # not splitlines(): tokens hold U+2028 etc.
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True,
                                  model_max_length=model_max_length)
    if tokenizer.vocab_size != len(tokens):
        raise RuntimeError(f"tokenizer built {tokenizer.vocab_size} tokens from {len(tokens)} in {vocab_path}")
    return tokenizer


def label_maps(label_names: Sequence[str]) -> dict:
    return {"num_labels": len(label_names),
            "id2label": {i: name for i, name in enumerate(label_names)},
            "label2id": {name: i for i, name in enumerate(label_names)}}


def build_random_classifier(bert_config_path: Path, label_names: Sequence[str], output_dir: Path,
                            vocab_path: Path | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised BERT classifier plus tokenizer with ``save_pretrained``."""
    config = BertConfig.from_json_file(str(bert_config_path))
    for key, value in label_maps(label_names).items():
        setattr(config, key, value)
    tokenizer = chinese_bert_tokenizer(vocab_path or bundled_chinese_vocab(), config.max_position_embeddings)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{bert_config_path}: vocab_size {config.vocab_size} != tokenizer's {tokenizer.vocab_size}")
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def load_classifier(name_or_path: str, label_names: Sequence[str] | None = None) -> LoadedClassifier:
    """Load a classifier from a hub id or a local directory.

    With ``label_names`` the classification head is sized for them (a fresh head when the
    checkpoint has none or a different one, as for the pretrained MiniRBT encoder).
    """
    kwargs = label_maps(label_names) if label_names is not None else {}
    if label_names is not None:
        kwargs["ignore_mismatched_sizes"] = True
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
    return LoadedClassifier(model=model, tokenizer=AutoTokenizer.from_pretrained(name_or_path))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def class_probabilities(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax class probabilities (B, C), computed in float32 whatever the autocast dtype."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   token_type_ids=token_type_ids).logits  # (B, C)
    return torch.softmax(logits.float(), dim=-1)


def classify_texts(loaded: LoadedClassifier, texts: Sequence[str], batch_size: int = 64, max_length: int = 128,
                   text_pairs: Sequence[str] | None = None) -> tuple[list[int], list[float]]:
    """Predicted label ids and their probabilities for texts, or sentence pairs (in-process, no Ray)."""
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
    labels, probs = [0] * len(texts), [0.0] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            pairs = None if text_pairs is None else [text_pairs[i] for i in rows]
            encoded = tokenizer([texts[i] for i in rows], pairs, truncation="longest_first", max_length=max_length,
                                padding=True, return_tensors="pt")
            p = class_probabilities(model, encoded["input_ids"], encoded["attention_mask"],
                                    encoded.get("token_type_ids"))
            best = p.max(dim=-1)
            for i, label, prob in zip(rows, best.indices.tolist(), best.values.tolist()):
                labels[i], probs[i] = label, prob
    return labels, probs
