"""Scoring predictors in-process (no Ray): a multi-megabyte row scores and is flagged truncated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from data_pipeline.quarantine import SCORABLE
from jobs.common.registry import ResolvedModel
from jobs.scoring.predictors import PredictorSettings, Seq2SeqPredictor, TokenizingClassifierPredictor

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
HUGE = "这家店的东西质量很好，物流也快。" * (3_000_000 // 16)  # ~3 M characters, ~9 MB of UTF-8


def test_a_multi_megabyte_row_scores_and_is_flagged_truncated(tmp_path):
    from model.classifier import build_random_classifier

    model_dir = build_random_classifier(ROOT / "configs/model/bert-debug.json", ["neg", "pos"], tmp_path / "m")
    resolved = ResolvedModel(load_uri=str(model_dir), name="m", version="local", run_id="")
    predictor = TokenizingClassifierPredictor(resolved, None, PredictorSettings(), str(model_dir), max_length=32,
                                              keep_columns=("id",))
    seen = []

    class Spy:  # the stage's Rust tokenizer, recording the texts it is handed
        def __init__(self, inner):
            self.inner = inner

        def encode_batch(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return self.inner.encode_batch(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    predictor.tokenize.tokenizer = Spy(predictor.tokenize.tokenizer)
    out = predictor(pa.table({"id": ["short", "huge"], "text": ["很好", HUGE]}))
    assert out["truncated"].tolist() == [False, True]
    assert max(seen) < 5_000  # the tokenizer saw a bounded prefix, not megabytes
    assert out["label"].tolist()[1] in (0, 1) and 0.0 <= out["probability"][1] <= 1.0
    same = predictor(pa.table({"id": ["cut"], "text": [HUGE[:5000]]}))  # the same tokens, the same score
    assert same["label"][0] == out["label"][1] and np.isclose(same["probability"][0], out["probability"][1])


def test_a_multi_megabyte_row_decodes_and_is_flagged_truncated(tmp_path):
    from data_pipeline.seq2seq import train_source_tokenizer, train_target_tokenizer
    from model.seq2seq_io import save_seq2seq
    from model.transformer import Seq2SeqConfig, Seq2SeqTransformer

    source, target = train_source_tokenizer(["银行行长", "还行"]), train_target_tokenizer(["yin2 hang2", "hai2 xing2"])
    cfg = Seq2SeqConfig(src_vocab_size=source.get_vocab_size(), tgt_vocab_size=target.get_vocab_size(),
                        d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_len=16)
    torch.manual_seed(0)
    save_seq2seq(Seq2SeqTransformer(cfg).eval(), source, target, tmp_path / "s2s")
    resolved = ResolvedModel(load_uri=str(tmp_path / "s2s"), name="s", version="local", run_id="")
    predictor = Seq2SeqPredictor(resolved, None, PredictorSettings(), str(tmp_path / "s2s"), max_length=8)
    seen = []
    inner = predictor.loaded.source_tokenizer

    class Spy:  # a Rust tokenizer's methods cannot be patched: wrap it
        def encode_batch(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return inner.encode_batch(texts, **kwargs)

    predictor.loaded.source_tokenizer = Spy()
    out = predictor(pa.table({"id": ["short", "huge"], "text": ["还行", HUGE], SCORABLE: [True, True]}))
    assert out["truncated"].tolist() == [False, True]
    assert isinstance(out["generated"][1], str)
    assert max(seen) < 5_000


def test_the_registered_classifier_pyfunc_cuts_a_huge_text_before_tokenizing_it(tmp_path):
    import pandas as pd

    from jobs.common.registry import TextClassifierModel
    from model.classifier import build_random_classifier, load_classifier

    model_dir = build_random_classifier(ROOT / "configs/model/bert-debug.json", ["neg", "pos"], tmp_path / "m")
    pyfunc = TextClassifierModel()
    pyfunc.loaded = load_classifier(str(model_dir))
    seen = []
    inner = pyfunc.loaded.tokenizer

    class Spy:  # records what the tokenizer is handed, then tokenizes it
        def __call__(self, texts, pairs=None, **kwargs):
            seen.extend(len(t) for t in texts)
            return inner(texts, pairs, **kwargs)

    pyfunc.loaded = pyfunc.loaded.__class__(**{**vars(pyfunc.loaded), "tokenizer": Spy()})
    out = pyfunc.predict(None, pd.DataFrame({"text": ["很好", HUGE]}))
    assert len(out) == 2 and max(seen) < 5_000
