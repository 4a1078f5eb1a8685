"""The seq2seq job's driver-side checks and its task, in-process on tiny inputs (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipeline.pinyin import write_pairs
from jobs.common import config as config_lib
from jobs.train.seq2seq import Seq2SeqTrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_invalid_inputs_fail_before_any_compute(tmp_path):
    from data_pipeline.pinyin import Pair
    from data_pipeline.validation import DataValidationError
    from jobs.train.seq2seq import prepare_data

    long_pair = Pair("a-0", "好" * 80, " ".join(["hao3"] * 80))
    for split in ("train", "val", "test"):
        write_pairs(tmp_path / f"{split}.parquet", [long_pair, Pair("b-0", "好", "hao3")])
    config = config_lib.load(Seq2SeqTrainConfig, ROOT / "configs/train_seq2seq.tiny.yaml", [
        f"data.{s}={tmp_path / (s + '.parquet')}" for s in ("train", "val", "test")])
    with pytest.raises(DataValidationError, match="more than model.max_len=64 tokens"):
        prepare_data(config)
    missing = config_lib.load(Seq2SeqTrainConfig, ROOT / "configs/train_seq2seq.tiny.yaml",
                              [f"data.train={tmp_path / 'nope.parquet'}"])
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        prepare_data(missing)


def test_a_multi_megabyte_row_is_refused_before_it_is_tokenized(tmp_path):
    from data_pipeline.pinyin import Pair
    from data_pipeline.validation import DataValidationError
    from jobs.train.seq2seq import prepare_data

    huge = Pair("h-0", "好" * 3_000_000, "hao3")
    write_pairs(tmp_path / "train.parquet", [Pair("a-0", "好", "hao3"), huge])
    for split in ("val", "test"):
        write_pairs(tmp_path / f"{split}.parquet", [Pair("b-0", "好", "hao3"), Pair("b-1", "行", "xing2")])
    config = config_lib.load(Seq2SeqTrainConfig, ROOT / "configs/train_seq2seq.tiny.yaml", [
        f"data.{s}={tmp_path / (s + '.parquet')}" for s in ("train", "val", "test")])
    with pytest.raises(DataValidationError, match=r"train.parquet, column 'source': 1 row\(s\) have more than 2048 "
                                                  r"characters \(the bound for model.max_len=64\)"):
        prepare_data(config)


def test_task_eval_sums_match_the_zero_sums_and_give_metrics():
    """In-process (no Ray): the task's loss, evaluation sums and metrics on one batch of a tiny model."""
    from data_pipeline.pinyin import ReadingTable
    from data_pipeline.seq2seq import collate_pairs, encode, train_source_tokenizer, train_target_tokenizer
    from jobs.train.seq2seq import Seq2SeqTask

    pairs = [("银行行长", "yin2 hang2 hang2 zhang3"), ("还行", "hai2 xing2"), ("不行了", "bu4 xing2 le5")]
    source = train_source_tokenizer(s for s, _ in pairs)
    target = train_target_tokenizer(t for _, t in pairs)
    config = config_lib.load(Seq2SeqTrainConfig, ROOT / "configs/train_seq2seq.tiny.yaml")
    task = Seq2SeqTask(config.model.with_vocab(source.get_vocab_size(), target.get_vocab_size()), source.to_str(),
                       target.to_str(), config.data, config.optim, config.objective,
                       ReadingTable.fit(pairs).polyphonic(), decode_max_len=8)
    torch.manual_seed(0)
    model = task.build_model()
    batch = collate_pairs(encode(source, [s for s, _ in pairs]), encode(target, [t for _, t in pairs]))
    batch.update(ids=["a", "b", "c"], sources=[s for s, _ in pairs], targets=[t for _, t in pairs])
    loss, n_rows, n_tokens = task.train_loss(model, batch)
    assert loss.requires_grad and (n_rows, n_tokens) == (3, 4 + 2 + 3 + 3)  # tokens incl. one eos per row
    sums = task.eval_sums(model, batch)
    assert sorted(sums) == sorted(task.zero_eval_sums())  # every worker all-reduces the same keys
    metrics = task.eval_metrics({k: sums[k] + z for k, z in task.zero_eval_sums().items()})
    assert metrics["decoded_rows"] == 3 and 0 <= metrics["syllable_accuracy"] <= 1
    assert metrics["loss"] > 0 and 0 <= metrics["token_accuracy"] <= 1
    assert "polyphonic_accuracy" in metrics  # 行 has two readings in these pairs
    assert task.eval_metrics(task.zero_eval_sums()) == {"loss": 0.0, "token_accuracy": 0.0}
    skipped = task.eval_sums(model, {**batch, "decode": False})
    assert float(skipped["decode_rows"]) == 0
