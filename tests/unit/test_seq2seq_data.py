"""Tests for data_pipeline/seq2seq.py (tokenizers, token-budget batching) and model/seq2seq_io.py (export)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from data_pipeline.seq2seq import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, TokenizePairs, collate_pairs,
                                   encode, estimate_batches_per_worker, plan_batches, row_cost, split_to_count,
                                   token_budget_batches, train_source_tokenizer, train_target_tokenizer)
from model.seq2seq_io import generate, generate_tokens, ids_to_tokens, load_seq2seq, save_seq2seq
from model.transformer import Seq2SeqConfig, Seq2SeqTransformer

torch.set_num_threads(1)

SOURCES = ["银行行长", "还行", "不行了", "iPhone好"]
TARGETS = ["yin2 hang2 hang2 zhang3", "hai2 xing2", "bu4 xing2 le5", "i P h o n e hao3"]


@pytest.fixture(scope="module")
def tokenizers():
    return train_source_tokenizer(SOURCES), train_target_tokenizer(TARGETS)


# ---- tokenizers ------------------------------------------------------------------------------

def test_specials_are_at_the_seq2seq_config_ids(tokenizers):
    for tok in tokenizers:
        assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]
    cfg = Seq2SeqConfig(src_vocab_size=10, tgt_vocab_size=10)
    assert (cfg.pad_id, cfg.bos_id, cfg.eos_id) == (PAD_ID, BOS_ID, EOS_ID)


def test_source_tokenizer_is_character_level_and_normalises(tokenizers):
    source, _ = tokenizers
    ids = encode(source, ["银行 行长", "ｉＰｈｏｎｅ", "好吗"])
    assert [source.id_to_token(i) for i in ids[0]] == list("银行行长")  # whitespace removed
    assert [source.id_to_token(i) for i in ids[1]] == list("iPhone")  # NFKC
    assert ids[2][1] == UNK_ID and len(ids[2]) == 2  # an unseen character is one <unk>


def test_target_tokenizer_is_word_level(tokenizers):
    _, target = tokenizers
    ids = encode(target, ["hai2 xing2", "hai2 zzz9"])
    assert [target.id_to_token(i) for i in ids[0]] == ["hai2", "xing2"]
    assert ids[1][1] == UNK_ID


def test_tokenize_stage_keeps_texts_and_emits_ids(tokenizers):
    source, target = tokenizers
    stage = TokenizePairs(source.to_str(), target.to_str(), "src", "tgt")
    out = stage(pa.table({"id": ["a", "b"], "src": SOURCES[:2], "tgt": TARGETS[:2]}))
    assert out.column_names == ["id", "source", "target", "src_ids", "tgt_ids"]
    assert [len(r) for r in out.column("src_ids").to_pylist()] == [4, 2]
    assert [len(r) for r in out.column("tgt_ids").to_pylist()] == [4, 2]


class SpyTokenizer:
    """Records the longest text handed to ``encode_batch`` (a Rust tokenizer's methods cannot be patched)."""

    def __init__(self, inner):
        self.inner, self.longest = inner, 0

    def encode_batch(self, texts, **kwargs):
        self.longest = max([self.longest] + [len(t) for t in texts])
        return self.inner.encode_batch(texts, **kwargs)


def test_tokenize_pairs_cuts_a_huge_text_before_tokenizing_it(tokenizers):
    from data_pipeline.text_limits import max_chars

    source, target = tokenizers
    stage = TokenizePairs(source.to_str(), target.to_str(), "src", "tgt", max_len=16)
    stage.source, stage.target = SpyTokenizer(stage.source), SpyTokenizer(stage.target)
    huge_src, huge_tgt = "银行行长" * 1_000_000, "yin2 hang2 " * 400_000
    out = stage(pa.table({"id": ["a", "b"], "src": [SOURCES[0], huge_src], "tgt": [TARGETS[0], huge_tgt]}))
    assert max(stage.source.longest, stage.target.longest) <= max_chars(16)
    src_ids = out.column("src_ids").to_pylist()
    assert len(src_ids[0]) == 4 and len(src_ids[1]) == max_chars(16)  # one token per source character
    assert src_ids[1][:16] == encode(source, [huge_src[:100]])[0][:16]


# ---- batching --------------------------------------------------------------------------------

def test_plan_batches_respects_the_token_budget_and_row_cap():
    rng = np.random.default_rng(0)
    costs = rng.integers(1, 40, size=500).tolist()
    plan = plan_batches(costs, max_tokens=200, max_rows=16)
    assert sorted(i for b in plan for i in b) == list(range(500))  # every row exactly once
    for batch in plan:
        assert len(batch) <= 16
        assert len(batch) * max(costs[i] for i in batch) <= 200
    assert plan_batches([500, 1], max_tokens=100, max_rows=8) == [[1], [0]]  # an over-long row goes alone


def test_split_to_count_halves_the_biggest_batches_without_losing_rows():
    plan = [[0, 1, 2, 3], [4, 5], [6]]
    out = split_to_count(plan, 5)
    assert len(out) == 5 and sorted(i for b in out for i in b) == list(range(7))
    assert split_to_count(plan, 3) == plan
    with pytest.raises(ValueError):
        split_to_count(plan, 2)
    assert len(split_to_count([[0]], 3)) == 3  # single rows: repeated (a safety net only)


def test_collate_adds_bos_and_eos_and_pads():
    out = collate_pairs([[5, 6, 7], [8]], [[9], [10, 11]])
    assert out["src_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["tgt_in"].tolist() == [[BOS_ID, 9, 0], [BOS_ID, 10, 11]]
    assert out["tgt_out"].tolist() == [[9, EOS_ID, 0], [10, 11, EOS_ID]]


def _objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _window(lengths, start=0):
    """A numpy batch as Ray Data hands it over: ragged id lists in object arrays."""
    return {"id": np.array([f"r{start + i}" for i in range(len(lengths))], dtype=object),
            "source": np.array(["好" * k for k in lengths], dtype=object),
            "target": np.array([" ".join(["hao3"] * k) for k in lengths], dtype=object),
            "src_ids": _objects([np.full(k, 5) for k in lengths]),
            "tgt_ids": _objects([np.full(k, 6) for k in lengths])}


def test_workers_agree_on_equal_step_counts():
    """Two simulated workers: the one with fewer batches per window splits its batches until counts match."""
    cheap = [_window([2] * 40, 0), _window([3] * 10, 40)]  # short rows: few batches
    costly = [_window([30] * 40, 100), _window([30] * 10, 140)]  # long rows: many batches
    budget, max_rows = 128, 64

    def n_batches(window):
        costs = [row_cost(len(s), len(t)) for s, t in zip(window["src_ids"], window["tgt_ids"])]
        return len(plan_batches(costs, budget, max_rows))

    agreed = [max(n_batches(a), n_batches(b)) for a, b in zip(cheap, costly)]
    assert n_batches(cheap[0]) < n_batches(costly[0])  # the case that would deadlock DDP

    def collective():  # what the all-reduce answers, window by window, then "nobody has rows left"
        answers = iter([(True, n) for n in agreed] + [(False, 0)])
        return lambda has_window, n: next(answers)

    for worker in (cheap, costly):
        batches = list(token_budget_batches(worker, budget, max_rows, seed=0, shuffle=True, agree=collective()))
        assert len(batches) == sum(agreed)
        ids = [i for b in batches for i in b["ids"]]
        assert sorted(ids) == sorted(i for w in worker for i in w["id"])  # every row exactly once


def test_a_worker_that_runs_out_first_replays_its_last_window():
    answers = iter([(True, 2), (True, 3), (False, 0)])
    batches = list(token_budget_batches([_window([2, 2, 2, 2])], 100, 2, seed=0, shuffle=False,
                                        agree=lambda has, n: next(answers)))
    assert len(batches) == 5


def test_eval_batches_need_no_agreement_and_keep_texts():
    batches = list(token_budget_batches([_window([1, 5, 3])], 100, 8, seed=0, shuffle=False))
    assert len(batches) == 1
    assert batches[0]["sources"] == ["好", "好好好", "好好好好好"]  # sorted by length
    assert batches[0]["targets"][0] == "hao3"


def test_estimate_batches_per_worker_is_positive():
    assert estimate_batches_per_worker([10] * 100, world=2, window_rows=20, max_tokens=50, max_rows=8) == 10
    assert estimate_batches_per_worker([], world=2, window_rows=20, max_tokens=50, max_rows=8) == 1


# ---- export ----------------------------------------------------------------------------------

def test_export_round_trip_and_generate(tmp_path, tokenizers):
    source, target = tokenizers
    cfg = Seq2SeqConfig(src_vocab_size=source.get_vocab_size(), tgt_vocab_size=target.get_vocab_size(),
                        d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_len=16)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(cfg).eval()
    save_seq2seq(model, source, target, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "seq2seq_config.json",
                                                    "source_tokenizer.json", "target_tokenizer.json"}
    loaded = load_seq2seq(tmp_path)
    assert loaded.config == cfg
    assert loaded.model.output_proj.weight is loaded.model.decoder.embed.embedding.weight  # still tied
    for (name, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    texts = ["还行", "", "银行行长不行"]
    out = generate(loaded, texts, max_len=6)
    assert len(out) == 3 and all(isinstance(t, str) for t in out) and out[1] == ""
    assert generate_tokens(loaded, texts, beam_size=2, max_len=6)[1] == []
    assert ids_to_tokens([BOS_ID, 4, UNK_ID, EOS_ID, 5], target, cfg) == [target.id_to_token(4), "<unk>"]


def test_the_pyfunc_cuts_a_huge_source_before_tokenizing_it(tokenizers, tmp_path):
    import pandas as pd

    from data_pipeline.text_limits import max_chars
    from jobs.common.seq2seq_pyfunc import TransliterationModel

    source, target = tokenizers
    cfg = Seq2SeqConfig(src_vocab_size=source.get_vocab_size(), tgt_vocab_size=target.get_vocab_size(),
                        d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_len=16)
    torch.manual_seed(0)
    pyfunc = TransliterationModel()
    pyfunc.loaded = load_seq2seq(save_seq2seq(Seq2SeqTransformer(cfg).eval(), source, target, tmp_path))
    spy = pyfunc.loaded.source_tokenizer = SpyTokenizer(pyfunc.loaded.source_tokenizer)
    huge = "银行行长不行了" * 1_000_000
    out = pyfunc.predict(None, pd.DataFrame({"source": ["还行", huge]}), {"max_len": 6})
    assert spy.longest <= max_chars(16)
    assert out["target"].tolist() == pyfunc.predict(None, ["还行", huge[:70]], {"max_len": 6})["target"].tolist()


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_seq2seq(tmp_path)
