"""Label names agree across files, splits and models (jobs/common/labels.py), checked before Ray starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.corpus import write_split
from data_pipeline.paths import resolve_parquet_files
from jobs.common.labels import LabelMismatchError, agreed_label_names, check_model_labels, model_label_names

NEG_POS, POS_NEG = ("negative", "positive"), ("positive", "negative")


def _split(path: Path, names: tuple[str, ...], n: int = 4) -> Path:
    write_split(path, [f"{path.stem}-{i}" for i in range(n)], [f"文本{path.stem}{i}" for i in range(n)],
                [i % 2 for i in range(n)], list(range(n)), names)
    return path


def _splits(tmp_path: Path, val_names=NEG_POS, test_names=NEG_POS) -> dict[str, Path]:
    return {"train": _split(tmp_path / "train.parquet", NEG_POS), "val": _split(tmp_path / "val.parquet", val_names),
            "test": _split(tmp_path / "test.parquet", test_names)}


def _resolved(paths: dict[str, Path]):
    return {split: resolve_parquet_files(str(path)) for split, path in paths.items()}


def test_agreeing_splits_give_their_label_names(tmp_path: Path):
    assert agreed_label_names(_resolved(_splits(tmp_path))) == list(NEG_POS)


def test_a_val_split_with_another_label_order_is_refused_naming_the_files_and_both_lists(tmp_path: Path):
    paths = _splits(tmp_path, val_names=POS_NEG)
    with pytest.raises(LabelMismatchError) as info:
        agreed_label_names(_resolved(paths))
    message = str(info.value)
    assert f"{paths['val']} (val split) has ['positive', 'negative']" in message
    assert f"{paths['train']} (train split) has ['negative', 'positive']" in message
    assert "same classes in the same order" in message


def test_every_file_of_a_split_is_checked_and_a_file_without_label_names_is_refused(tmp_path: Path):
    paths = _splits(tmp_path)
    (tmp_path / "train").mkdir()
    paths["train"] = tmp_path / "train"
    _split(tmp_path / "train" / "part-0.parquet", NEG_POS)
    _split(tmp_path / "train" / "part-1.parquet", ("negative", "positive", "neutral"))
    with pytest.raises(LabelMismatchError, match=r"part-1\.parquet \(train split\) has \['negative', 'positive', "
                                                 r"'neutral'\], .*part-0\.parquet \(train split\)"):
        agreed_label_names(_resolved(paths))
    (tmp_path / "train" / "part-1.parquet").unlink()
    pq.write_table(pa.table({"id": ["a"], "text": ["好"], "label": [0]}), tmp_path / "test.parquet")
    with pytest.raises(LabelMismatchError, match=r"test\.parquet \(test split\): no label_names in the Parquet"):
        agreed_label_names(_resolved(paths))


def test_finetune_refuses_disagreeing_splits_before_ray_is_imported(tmp_path: Path, monkeypatch):
    from jobs.train.classifier import ClassifierData, FinetuneConfig, prepare

    paths = _splits(tmp_path, test_names=POS_NEG)
    config = FinetuneConfig(data=ClassifierData(train=str(paths["train"]), val=str(paths["val"]),
                                                test=str(paths["test"])))
    monkeypatch.setitem(sys.modules, "ray", None)  # any import of Ray from here on fails
    with pytest.raises(LabelMismatchError, match=r"test\.parquet \(test split\) has \['positive', 'negative'\]"):
        prepare(config, None)


def _model_dir(tmp_path: Path, names: tuple[str, ...]) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"id2label": {str(i): n for i, n in enumerate(names)}}))
    return model


def test_the_model_must_number_the_classes_as_a_labelled_input_does(tmp_path: Path):
    model = _model_dir(tmp_path, POS_NEG)
    assert model_label_names(model) == list(POS_NEG)
    data = resolve_parquet_files(str(_split(tmp_path / "test.parquet", NEG_POS)))
    with pytest.raises(LabelMismatchError) as info:
        check_model_labels(model_label_names(model), "models:/m/3", data)
    message = str(info.value)
    assert "the model models:/m/3 names its classes ['positive', 'negative']" in message
    assert f"the input {tmp_path / 'test.parquet'} names them ['negative', 'positive']" in message
    check_model_labels(list(NEG_POS), "models:/m/4", data)  # the same order: fine
    pq.write_table(pa.table({"id": ["a"], "text": ["好"]}), tmp_path / "unlabelled.parquet")
    check_model_labels(list(POS_NEG), "models:/m/3", resolve_parquet_files(str(tmp_path / "unlabelled.parquet")))


def test_a_file_that_is_not_parquet_is_an_input_error_naming_it(tmp_path: Path):
    from data_pipeline.errors import InputDataError

    paths = _splits(tmp_path)
    paths["val"].write_bytes(b"PAR1" + b"\0" * 64)  # a truncated or corrupt file
    with pytest.raises(InputDataError, match=r"val\.parquet: unreadable as Parquet"):
        agreed_label_names(_resolved(paths))
