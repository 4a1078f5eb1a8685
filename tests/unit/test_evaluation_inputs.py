"""The evaluation job's reading of a labelled file: label mapping onto the model, ids, leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.corpus import write_split
from data_pipeline.readers import InputFormatError, TextFields
from jobs.evaluation.inputs import EvaluationInput, read_classification_rows, read_seq2seq_rows
from jobs.evaluation.results import rows_also_in_training


def test_string_labels_map_onto_the_models_label_order_and_rows_are_numbered(tmp_path: Path):
    path = tmp_path / "eval.csv"
    path.write_text("title,body,y\n好,很好,pos\n差,\"很差\n真差\",neg\n", encoding="utf-8")
    settings = EvaluationInput(fields=TextFields(text_columns=("title",), pair_column="body"), label_column="y")
    rows = read_classification_rows(str(path), settings, model_labels=["pos", "neg"])
    assert rows.labels == [0, 1] and rows.ids == ["row-1", "row-2"]
    assert rows.texts == ["好", "差"] and rows.text_pairs == ["很好", "很差\n真差"]
    assert rows.columns.pair == "text_pair"
    with pytest.raises(InputFormatError, match=r"eval\.csv.*\['neg', 'pos'\].*\['a', 'b'\]"):
        read_classification_rows(str(path), settings, model_labels=["a", "b"])


def test_a_prepared_corpus_needs_no_settings_and_its_label_names_are_matched_by_name(tmp_path: Path):
    path = tmp_path / "test.parquet"
    write_split(path, ["x", "y", "z"], ["甲", "乙", "丙"], [0, 1, 1], [0, 1, 2], ("neg", "pos"),
                text_pairs=["一", "二", "三"])
    rows = read_classification_rows(str(path), EvaluationInput(), model_labels=["pos", "neg"])
    assert rows.ids == ["x", "y", "z"] and rows.labels == [1, 0, 0] and rows.text_pairs == ["一", "二", "三"]


def test_repeated_ids_are_an_error_naming_the_count(tmp_path: Path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"id": "a", "text": "x", "label": "p"}\n{"id": "a", "text": "y", "label": "p"}\n',
                    encoding="utf-8")
    with pytest.raises(InputFormatError, match="1 row.s. repeat an id"):
        read_classification_rows(str(path), EvaluationInput(id_column="id"), model_labels=["p"])


def test_seq2seq_rows_need_a_reference_for_each_row(tmp_path: Path):
    path = tmp_path / "pairs.csv"
    path.write_text("source,target\n银行,yin2 hang2\n还行,\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match="1 row.s. have no reference"):
        read_seq2seq_rows(str(path), EvaluationInput())


def test_rows_also_in_training_compare_normalised_text_and_pair(tmp_path: Path):
    train, evaluated = tmp_path / "train.csv", tmp_path / "eval.csv"
    train.write_text("t,b,y\n好 吧,一,p\n坏,二,n\n", encoding="utf-8")
    evaluated.write_text("t,b,y\n好  吧,一,p\n坏,三,n\n新,四,p\n", encoding="utf-8")
    settings = EvaluationInput(fields=TextFields(text_columns=("t",), pair_column="b"), label_column="y")
    rows = read_classification_rows(str(evaluated), settings, ["n", "p"])
    assert rows_also_in_training(rows, read_classification_rows(str(train), settings, ["n", "p"])) == 1
