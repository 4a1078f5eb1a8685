"""The predictor's int8 and token-budget paths against the fp32 one, and their config checks (no Ray).

The model is the tiny BERT (configs/model/bert-debug.json) trained for a few steps to tell two
word lists apart, so its labels carry a margin: on a random model every probability sits near 0.5
and any rounding flips labels, which would test nothing. The compiled path (~45 s of inductor
compilation on 2 cores) is tested in tests/integration/test_scoring_quantized.py.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.scoring.batch import BatchInferConfig
from jobs.common.config import ConfigError, load
from jobs.common.registry import ResolvedModel
from jobs.scoring.partitions import ScorePartitionsConfig
from jobs.scoring.predictors import PredictorSettings, TokenizingClassifierPredictor, forward_passes

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
GOOD, BAD, FILLER = "好棒喜欢满意推荐", "差烂失望退货糟", "的了是我这个东西快递包装价格还"
# int8 against fp32 on 300 held-out texts of the trained tiny model: 300/300 labels agreed and the
# largest probability difference was ~0.01 when this test was written; the bounds leave room for
# other CPUs' int8 kernels (fbgemm, onednn) without letting a broken path through.
MIN_LABEL_AGREEMENT = 0.98
MAX_PROBABILITY_DIFF = 0.05


def reviews(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        words = GOOD if label else BAD
        chars = [rng.choice(words) for _ in range(rng.randint(1, 4))]
        chars += [rng.choice(FILLER) for _ in range(rng.randint(2, 40))]
        rng.shuffle(chars)
        texts.append("".join(chars))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model.classifier import build_random_classifier, load_classifier

    out = build_random_classifier(ROOT / "configs/model/bert-debug.json", ["neg", "pos"],
                                  tmp_path_factory.mktemp("m") / "model")
    loaded = load_classifier(str(out))
    model, tokenizer = loaded.model.train(), loaded.tokenizer
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    texts, labels = reviews(640, seed=1)
    for _ in range(3):  # 60 steps, ~5 s: held-out accuracy 1.0, median top probability ~0.99
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start:start + 32], padding=True, return_tensors="pt")
            model(**batch, labels=torch.tensor(labels[start:start + 32])).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().save_pretrained(out)
    return out


def score(model_dir: Path, texts: list[str], **settings) -> dict[str, np.ndarray]:
    resolved = ResolvedModel(load_uri=str(model_dir), name="m", version="local", run_id="")
    predictor = TokenizingClassifierPredictor(resolved, None, PredictorSettings(**settings), str(model_dir),
                                              max_length=64, keep_columns=("id",))
    out = predictor(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    out["model"] = predictor.model
    return out


def test_the_int8_predictor_agrees_with_fp32_and_quantizes_only_the_linear_layers(model_dir):
    texts, truth = reviews(300, seed=2)
    fp32 = score(model_dir, texts)
    assert (fp32["label"] == np.array(truth)).mean() > 0.9  # the model learned the task: labels have a margin
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = score(model_dir, texts, quantize="dynamic_int8")
    assert not [str(w.message) for w in caught if "quantiz" in str(w.message)]  # the notices are silenced
    assert (int8["label"] == fp32["label"]).mean() >= MIN_LABEL_AGREEMENT
    assert np.abs(int8["probability"] - fp32["probability"]).max() <= MAX_PROBABILITY_DIFF
    model = int8["model"]
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, torch.ao.nn.quantized.dynamic.Linear)
    assert query.weight().dtype == torch.qint8
    assert isinstance(model.classifier, torch.ao.nn.quantized.dynamic.Linear)
    assert model.bert.embeddings.word_embeddings.weight.dtype == torch.float32  # embeddings stay fp32
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in model.modules())


def test_the_classifier_uses_the_fused_attention_kernel(model_dir):
    out = score(model_dir, ["很好"])
    assert out["model"].config._attn_implementation == "sdpa"


def test_forward_passes_respect_the_row_and_the_token_budgets():
    lengths = np.array([2, 2, 3, 3, 5, 8, 8, 30])
    passes = forward_passes(lengths, max_rows=3)
    assert [(p.start, p.stop) for p in passes] == [(0, 3), (3, 6), (6, 8)]
    passes = forward_passes(lengths, max_rows=64, max_tokens=16)
    assert [(p.start, p.stop) for p in passes] == [(0, 4), (4, 6), (6, 7), (7, 8)]  # 4x3, 2x5... alone: 30 > 16
    for p in passes[:-1]:
        assert (p.stop - p.start) * lengths[p.stop - 1] <= 16
    assert forward_passes(np.array([], dtype=np.int64), 4, 8) == []


def test_a_token_budget_changes_the_passes_not_the_predictions(model_dir):
    texts, _ = reviews(100, seed=4)
    by_rows = score(model_dir, texts)
    by_tokens = score(model_dir, texts, forward_batch_tokens=256)
    assert by_tokens["label"].tolist() == by_rows["label"].tolist()
    np.testing.assert_allclose(by_tokens["probability"], by_rows["probability"], atol=1e-5)


# ---------------------------------------------------------------- config checks at load


@pytest.mark.parametrize("cls", [BatchInferConfig, ScorePartitionsConfig])
@pytest.mark.parametrize("overrides, words", [
    (["predictor.quantize=dynamic_int8", "predictor.num_gpus=1"], ("quantize dynamic_int8", "num_gpus: 0")),
    (["predictor.quantize=dynamic_int8", "predictor.num_gpus=1", "predictor.precision=bf16"],
     ("quantize dynamic_int8", "precision: fp32")),
    (["predictor.precision=bf16"], ("precision bf16 is a GPU setting",)),
    (["predictor.precision=fp16"], ("precision fp16 is a GPU setting",)),
    (["predictor.quantize=int4"], ("predictor.quantize", "'none'", "'dynamic_int8'")),
    (["predictor.forward_batch_tokens=-1"], ("forward_batch_tokens",)),
])
def test_the_config_refuses_settings_that_cannot_run(cls, overrides, words):
    with pytest.raises(ConfigError) as info:
        load(cls, None, overrides)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_the_new_settings_load():
    cfg = load(BatchInferConfig, None, ["predictor.quantize=dynamic_int8", "predictor.compile=true"])
    assert cfg.predictor.quantize == "dynamic_int8" and cfg.predictor.compile
    gpu = load(BatchInferConfig, None, ["predictor.num_gpus=1", "predictor.precision=bf16",
                                        "predictor.forward_batch_tokens=65536"])
    assert gpu.predictor.precision == "bf16" and gpu.predictor.forward_batch_tokens == 65536
    for name in ("batch_infer", "score_partitions"):  # the shipped configs still load
        for target in ("local-cpu", "cluster-gpu"):
            cls = BatchInferConfig if name == "batch_infer" else ScorePartitionsConfig
            load(cls, str(ROOT / f"configs/{name}.{target}.yaml"), [])


def test_a_resume_under_other_numerics_starts_fresh():
    """int8, compiled or half-precision scores differ slightly from fp32 ones: a run's chunks are not mixed."""
    from jobs.scoring.batch import run_fingerprint
    from jobs.scoring.pipeline import ScoringModel

    model = ScoringModel(ResolvedModel(load_uri="/m", name="m", version="1", run_id="r"), None, "/m", "classifier")
    fp32 = run_fingerprint(load(BatchInferConfig, None, []), model)
    assert fp32["settings"]["quantize"] == "none" and fp32["settings"]["compile"] is False
    for override in ("predictor.quantize=dynamic_int8", "predictor.compile=true"):
        assert run_fingerprint(load(BatchInferConfig, None, [override]), model) != fp32, override
    assert run_fingerprint(load(BatchInferConfig, None, ["predictor.concurrency=4"]), model) == fp32


def test_a_seq2seq_model_refuses_the_classifier_only_settings(tmp_path):
    from data_pipeline.quarantine import InputColumns
    from data_pipeline.seq2seq import train_source_tokenizer, train_target_tokenizer
    from jobs.scoring.pipeline import ScoringError, ScoringModel, score_groups
    from jobs.scoring.settings import PipelineSettings
    from model.seq2seq_io import save_seq2seq
    from model.transformer import Seq2SeqConfig, Seq2SeqTransformer

    source, target = train_source_tokenizer(["银行行长"]), train_target_tokenizer(["yin2 hang2"])
    cfg = Seq2SeqConfig(src_vocab_size=source.get_vocab_size(), tgt_vocab_size=target.get_vocab_size(),
                        d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_len=16)
    save_seq2seq(Seq2SeqTransformer(cfg).eval(), source, target, tmp_path / "s2s")
    model = ScoringModel.of(ResolvedModel(load_uri=str(tmp_path / "s2s"), name="s", version="local", run_id=""),
                            None)
    for predictor in (PredictorSettings(quantize="dynamic_int8"), PredictorSettings(compile=True)):
        with pytest.raises(ScoringError, match="apply to classifiers"):
            score_groups([], {}, model, PipelineSettings(predictor=predictor), InputColumns(text="text"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_seq2seq_predictor_decodes_under_bf16_autocast_on_gpu(tmp_path):
    from data_pipeline.quarantine import SCORABLE
    from data_pipeline.seq2seq import train_source_tokenizer, train_target_tokenizer
    from jobs.scoring.predictors import Seq2SeqPredictor
    from model.seq2seq_io import save_seq2seq
    from model.transformer import Seq2SeqConfig, Seq2SeqTransformer

    source = train_source_tokenizer(["银行行长", "还行"])
    target = train_target_tokenizer(["yin2 hang2", "hai2 xing2"])
    cfg = Seq2SeqConfig(src_vocab_size=source.get_vocab_size(), tgt_vocab_size=target.get_vocab_size(),
                        d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_len=16)
    torch.manual_seed(0)
    save_seq2seq(Seq2SeqTransformer(cfg).eval(), source, target, tmp_path / "s2s")
    resolved = ResolvedModel(load_uri=str(tmp_path / "s2s"), name="s", version="local", run_id="")
    predictor = Seq2SeqPredictor(resolved, None, PredictorSettings(num_gpus=1, precision="bf16"),
                                 str(tmp_path / "s2s"), max_length=8)
    seen = []  # the autocast state at every Linear call (greedy decoding calls encode and decode_step)
    for module in predictor.loaded.model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(
                lambda m, args: seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))))
    out = predictor(pa.table({"id": ["a", "b"], "text": ["还行", "银行"], SCORABLE: [True, True]}))
    assert all(isinstance(text, str) for text in out["generated"])
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
