"""The classifier task in-process (no Ray): class weights, sentence pairs, per-class metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.common.metrics import (calibration, class_counts, class_report, class_report_from_counts,
                                    confusion_matrix)
from jobs.train.classifier import ClassifierOptim, ClassifierTask, balanced_class_weights


class TinyClassifier(torch.nn.Module):
    """Stands in for a BERT classifier: logits from the mean token embedding (token types add in)."""

    def __init__(self, n_labels: int):
        super().__init__()
        self.embed = torch.nn.Embedding(50, n_labels)
        self.types = torch.nn.Embedding(2, n_labels)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.embed(input_ids) + (0 if token_type_ids is None else self.types(token_type_ids))
        logits = (hidden * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
        return type("Output", (), {"logits": logits})()


def _batch(labels, pairs: bool = False):
    torch.manual_seed(0)
    ids = torch.randint(1, 50, (len(labels), 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(labels)}
    if pairs:
        batch["token_type_ids"] = torch.tensor([[0, 0, 0, 1, 1, 1]] * len(labels))
    return batch


def test_balanced_weights_are_inverse_frequency():
    assert balanced_class_weights([60, 30, 10]) == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    assert balanced_class_weights([5, 0]) == [0.5, 0.0]  # a class absent from training weighs nothing


def test_weighted_loss_is_the_weighted_cross_entropy_and_pairs_use_token_types():
    weights = [0.5, 1.0, 3.0]
    task = ClassifierTask("unused", ["a", "b", "c"], ClassifierOptim(), pad_id=0, class_weights=weights)
    model, batch = TinyClassifier(3), _batch([0, 0, 1, 2], pairs=True)
    loss, rows, tokens = task.train_loss(model, batch)
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor(weights))
    torch.testing.assert_close(loss, expected)
    assert rows == 4 and int(tokens) == 24
    unweighted, _, _ = ClassifierTask("unused", ["a", "b", "c"], ClassifierOptim(), 0).train_loss(model, batch)
    assert not torch.allclose(loss, unweighted)
    without_types = model(batch["input_ids"], batch["attention_mask"]).logits
    assert not torch.allclose(logits, without_types)  # the second segment is told apart


def test_eval_metrics_give_per_class_scores_and_flag_a_class_never_predicted():
    task = ClassifierTask("unused", ["体育", "财经", "科技"], ClassifierOptim(), pad_id=0)
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [1, 1, 0]])
    counts = {"true_positive": confusion.diag(), "predicted": confusion.sum(0), "support": confusion.sum(1)}
    metrics = task.eval_metrics({"loss_sum": torch.tensor(8.0), **counts})
    assert metrics["accuracy"] == pytest.approx(8 / 13) and metrics["loss"] == pytest.approx(8 / 13)
    assert metrics["precision_体育"] == pytest.approx(5 / 8) and metrics["recall_财经"] == pytest.approx(3 / 5)
    assert metrics["f1_科技"] == 0.0 and metrics["predicted_科技"] == 0.0
    assert metrics["macro_f1"] == pytest.approx(np.mean([2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6),
                                                         0.6, 0.0]))  # 财经: P = R = 3/5
    report = class_report(confusion.numpy(), task.label_names)
    assert report.never_predicted == ["科技"]
    assert any("科技" in line for line in report.table())


def test_eval_sums_grow_with_the_label_count_not_its_square():
    n = 5000
    names = [f"c{i}" for i in range(n)]
    task = ClassifierTask("unused", names, ClassifierOptim(), pad_id=0)
    model, batch = TinyClassifier(n), _batch([0, 7, 7, 4999, 3])
    sums = task.eval_sums(model, batch)
    assert sorted(sums) == sorted(task.zero_eval_sums())  # every worker all-reduces the same keys
    assert sum(v.numel() for v in sums.values()) <= 3 * n + 1  # a confusion matrix would be 25M counts
    predicted = model(batch["input_ids"], batch["attention_mask"]).logits.argmax(-1)
    expected = class_report(confusion_matrix(batch["labels"], predicted, n), names)
    zeros = task.zero_eval_sums()
    metrics = task.eval_metrics({key: sums[key] + zeros[key] for key in zeros})
    assert metrics["accuracy"] == expected.accuracy and metrics["macro_f1"] == pytest.approx(expected.macro_f1)
    assert metrics["rows"] == 5 and metrics["predicted_c7"] == expected.classes[7].predicted


def test_class_counts_give_the_confusion_matrix_report():
    true, predicted = [0, 1, 1, 2, 2, 2], [0, 1, 0, 2, 1, 2]
    from_counts = class_counts(true, predicted, 4)
    assert from_counts["true_positive"].tolist() == [1, 1, 2, 0] and from_counts["support"].tolist() == [1, 2, 3, 0]
    names = ["a", "b", "c", "d"]
    assert class_report_from_counts(**from_counts, label_names=names) == class_report(
        confusion_matrix(true, predicted, 4), names)


def test_confusion_matrix_and_calibration():
    confusion = confusion_matrix([0, 1, 1, 2], [0, 1, 0, 2], 3)
    assert confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    result = calibration([0.95, 0.95, 0.55, 0.55], [True, True, True, False], bins=10)
    # bin (0.9, 1.0]: confidence 0.95, accuracy 1.0; bin (0.5, 0.6]: confidence 0.55, accuracy 0.5
    assert result.ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    assert result.bin_rows.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    as_json = result.as_dict()  # empty bins are null, not NaN (JSON has no NaN)
    assert as_json["bin_accuracy"][0] is None and as_json["bin_accuracy"][5] == 0.5 and as_json["bin_accuracy"][9] == 1.0
    perfect = calibration([1.0, 1.0], [True, True])
    assert perfect.ece == 0.0


def _write_split(path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipeline.schema import label_names_metadata

    table = pa.table({"id": pa.array([f"r{i}" for i in range(len(texts))], type=pa.string()),
                      "text": pa.array(texts, type=pa.string()),
                      "label": pa.array([i % 2 for i in range(len(texts))], type=pa.int64())})
    pq.write_table(table.replace_schema_metadata(label_names_metadata(["neg", "pos"])), path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from model.classifier import bundled_chinese_vocab, chinese_bert_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    chinese_bert_tokenizer(bundled_chinese_vocab()).save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("empty, workers, message", [
    ("train", 0, r"data.train \(.*train.parquet\): no rows"),
    ("val", 0, r"data.val \(.*val.parquet\): no rows"),
    ("test", 0, r"data.test \(.*test.parquet\): no rows"),
    (None, 4, r"data.train \(.*train.parquet\): 3 row\(s\), fewer than the 4 training workers"),
])
def test_an_empty_split_is_refused_before_anything_trains(tmp_path, tokenizer_dir, empty, workers, message):
    from jobs.train.classifier import ClassifierData, ClassifierModel, FinetuneConfig, prepare
    from jobs.train.settings import ScalingSettings

    for split in ("train", "val", "test"):
        _write_split(tmp_path / f"{split}.parquet", [] if split == empty else ["很好", "很差", "还行"])
    paths = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "val", "test")}
    config = FinetuneConfig(data=ClassifierData(**paths),
                            model=ClassifierModel(name_or_path=tokenizer_dir), baselines=False,
                            scaling=ScalingSettings(num_workers=workers))
    with pytest.raises(ValueError, match=message):
        prepare(config, None)


def test_baselines_over_the_row_limit_run_on_a_sample_and_say_so(tmp_path, tokenizer_dir):
    from jobs.train.classifier import ClassifierData, ClassifierModel, FinetuneConfig, prepare

    texts = ["很好", "很差", "还行", "很好用", "太差了", "好"] * 2
    for split in ("train", "val", "test"):
        _write_split(tmp_path / f"{split}.parquet", texts)
    paths = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "val", "test")}
    model = ClassifierModel(name_or_path=tokenizer_dir)
    plan = prepare(FinetuneConfig(data=ClassifierData(**paths, baseline_max_rows=8), model=model), None)
    assert plan.params["baseline_sample_rows"] == 8
    assert plan.dicts["baseline_rows.json"] == {"train_rows": 12, "train_rows_used": 8, "test_rows": 12,
                                                "test_rows_used": 8, "max_rows": 8, "seed": 0}
    assert "baseline_char_ngram_test_accuracy" in plan.baselines
    whole = prepare(FinetuneConfig(data=ClassifierData(**paths), model=model), None)
    assert whole.params["baseline_sample_rows"] == "all"
    assert whole.dicts["baseline_rows.json"]["train_rows_used"] == 12
