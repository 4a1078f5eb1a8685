"""Strict config loading beyond types: duplicate YAML keys, fixed-value settings, cross-field limits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jobs.scoring.batch import BatchInferConfig
from jobs.common.config import ConfigError, load, parse_args
from jobs.common.registry import ResolvedModel, check_max_length, position_limit
from jobs.train.classifier import FinetuneConfig
from jobs.scoring.partitions import ScorePartitionsConfig
from jobs.scoring.ledger import LeaseSettings
from jobs.train.seq2seq import Seq2SeqTrainConfig


def load_text(tmp_path: Path, text: str, cls=FinetuneConfig, overrides=()):
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return load(cls, path, overrides)


# ---------------------------------------------------------------- duplicate keys

def test_a_second_section_block_is_an_error_naming_the_key_and_both_lines(tmp_path):
    text = "optim:\n  lr: 3.0e-4\nscaling:\n  num_workers: 1\noptim:\n  epochs: 2\n"
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "duplicate key optim" in message and "line 5" in message and "line 1" in message
    assert str(tmp_path / "job.yaml") in message


def test_duplicate_nested_keys_are_named_with_their_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate key optim\.lr at line 4 \(first set at line 2\)"):
        load_text(tmp_path, "optim:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"duplicate key optim\.lr at line 1"):
        load_text(tmp_path, "optim: {lr: 1.0e-4, lr: 3.0e-4}\n")  # a flow mapping on one line
    with pytest.raises(ConfigError, match=r"duplicate key data\.text_column"):
        load_text(tmp_path, "data:\n  text_column: a\n  'text_column': b\n")  # quoting makes no other key


def test_duplicates_inside_list_items_are_found(tmp_path):
    from jobs.corpus.prepare import PrepareCorpusConfig

    with pytest.raises(ConfigError, match=r"duplicate key input\.label_names\[0\]\.a"):
        load_text(tmp_path, "input:\n  label_names:\n    - {a: 1, a: 2}\n", PrepareCorpusConfig)


def test_merge_keys_may_still_be_overridden(tmp_path):
    cfg = load_text(tmp_path, "optim:\n  <<: {lr: 1.0e-4, epochs: 2}\n  lr: 3.0e-4\nscaling: {num_workers: 1}\n")
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.epochs == 2 and cfg.scaling.num_workers == 1


def test_an_anchor_used_twice_is_not_a_duplicate(tmp_path):
    from jobs.corpus.prepare import PrepareCorpusConfig

    text = "input:\n  fields: {text_columns: &cols [title, body]}\n  label_names: *cols\n"
    cfg = load_text(tmp_path, text, PrepareCorpusConfig)
    assert cfg.input.label_names == ("title", "body") == cfg.input.fields.text_columns


def test_a_duplicate_inside_an_override_value_is_named(capsys):
    with pytest.raises(SystemExit):
        parse_args(FinetuneConfig, "test", ["--set", "optim={lr: 1.0e-4, lr: 3.0e-4}"])
    err = capsys.readouterr().err
    assert "--set optim" in err and "duplicate key lr" in err


# ---------------------------------------------------------------- settings with a fixed set of values

@pytest.mark.parametrize("cls, key, bad, allowed", [
    (FinetuneConfig, "optim.precision", "fp8", ("fp32", "bf16", "fp16")),
    (FinetuneConfig, "optim.schedule", "step", ("linear", "cosine", "inverse_sqrt", "constant")),
    (FinetuneConfig, "scaling.backend", "mpi", ("auto", "gloo", "nccl")),
    (FinetuneConfig, "run.checkpoint_mode", "maximum", ("min", "max")),
    (FinetuneConfig, "optim.class_weights", "inverse", ("none", "balanced")),
    (BatchInferConfig, "sink.compression", "lzma", ("zstd", "snappy", "gzip", "brotli", "lz4", "none")),
    (BatchInferConfig, "predictor.precision", "half", ("fp32", "bf16", "fp16")),
    (BatchInferConfig, "input.format.format", "xlsx", ("auto", "csv", "jsonl", "parquet")),
    (ScorePartitionsConfig, "predictor.precision", "int8", ("fp32", "bf16", "fp16")),
])
def test_fixed_value_settings_name_the_key_and_the_allowed_values(tmp_path, cls, key, bad, allowed):
    *sections, name = key.split(".")
    nested = "".join(f"{'  ' * depth}{section}:\n" for depth, section in enumerate(sections))
    messages = []
    for how in ("file", "override"):
        with pytest.raises(ConfigError) as info:
            if how == "file":
                load_text(tmp_path, f"{nested}{'  ' * len(sections)}{name}: {bad}\n", cls)
            else:
                load(cls, None, [f"{key}={bad}"])
        messages.append(str(info.value))
    for message in messages:
        assert key in message and repr(bad) in message, message
        assert all(repr(value) in message for value in allowed), message


def test_the_allowed_values_load(tmp_path):
    cfg = load(BatchInferConfig, None, ["sink.compression=none", "predictor.precision=fp16", "predictor.num_gpus=1"])
    assert cfg.sink.compression == "none" and cfg.predictor.precision == "fp16"


# ---------------------------------------------------------------- cross-field checks at load

def test_lease_heartbeat_must_come_before_the_ttl(tmp_path):
    with pytest.raises(ConfigError, match=r"lease\.heartbeat_s \(900\.0\) must be > 0 and below lease\.ttl_s"):
        load(ScorePartitionsConfig, None, ["lease.heartbeat_s=900"])
    with pytest.raises(ConfigError, match="heartbeat_s"):
        load_text(tmp_path, "lease: {ttl_s: 30, heartbeat_s: 60}\n", ScorePartitionsConfig)
    with pytest.raises(ValueError, match="heartbeat_s"):
        LeaseSettings(ttl_s=60, heartbeat_s=0)
    assert load(ScorePartitionsConfig, None, ["lease.ttl_s=120", "lease.heartbeat_s=5"]).lease.heartbeat_s == 5


def test_seq2seq_decode_length_must_fit_the_models_positions():
    with pytest.raises(ConfigError, match=r"decode_max_len \(100\) must be in \[1, model\.max_len=64\]"):
        load(Seq2SeqTrainConfig, None, ["model.max_len=64", "objective.decode_max_len=100"])
    assert load(Seq2SeqTrainConfig, None, ["model.max_len=64", "objective.decode_max_len=64"])


def _hf_dir(tmp_path: Path, positions: int) -> Path:
    model_dir = tmp_path / f"bert-{positions}"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": positions}))
    return model_dir


def test_max_length_beyond_the_models_positions_is_refused_naming_the_key(tmp_path):
    model_dir = _hf_dir(tmp_path, 64)
    assert position_limit(model_dir) == 64
    check_max_length(model_dir, 64, "data.max_length")  # exactly the limit fits
    with pytest.raises(ConfigError, match=r"data\.max_length: 128 exceeds the model's position limit, 64 tokens"):
        check_max_length(model_dir, 128, "data.max_length")
    seq2seq_dir = tmp_path / "seq2seq"
    seq2seq_dir.mkdir()
    assert position_limit(seq2seq_dir) is None  # no config.json: nothing to check against


def test_scoring_refuses_a_max_length_the_classifier_cannot_take_before_any_work(tmp_path, monkeypatch):
    from jobs.scoring.pipeline import ScoringModel, score_groups

    monkeypatch.setitem(sys.modules, "ray.data", None)  # before any work: Ray Data is not even imported
    model_dir = _hf_dir(tmp_path, 64)
    model = ScoringModel(ResolvedModel(load_uri=str(model_dir), name="m", version="v", run_id=""), None,
                         str(model_dir), "classifier")
    config = load(BatchInferConfig, None, ["max_length=128"])
    with pytest.raises(ConfigError, match=r"max_length: 128 exceeds the model's position limit, 64"):
        score_groups([], {}, model, config, config.input.columns)
