"""prepare_corpus on a user's files as they come: given splits, encodings, several text fields."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.readers import FileFormat, InputFormatError, TextFields
from data_pipeline.schema import label_names_from_schema
from jobs.corpus.prepare import CorpusInput, GivenSplits, PrepareCorpusConfig, SplitSettings, run

HEADER = ["doc_id", "title", "body", "category"]


def _write_csv(path: Path, rows: list[list[str]], encoding: str = "gb18030") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def _given_split_files(tmp_path: Path) -> dict[str, Path]:
    train = [[f"t{i}", f"体育新闻{i}", f"第一段，\"比赛\"\n第二段{i}", "sports"] for i in range(8)]
    train += [[f"t1{i}", f"财经{i}", f"股市{i}\n收盘", "finance"] for i in range(3)]
    train += [["t20", "科技", "芯片\n发布", "tech"], ["t21", "体育新闻0", "第一段，\"比赛\"\n第二段0", "sports"]]
    val = [["v0", "财经新", "债券\n上涨", "finance"], ["v1", "体育新", "足球\n进球", "sports"], ["v2", "科技新", "手机", "tech"]]
    test = [["s0", "体育新闻1", "第一段，\"比赛\"\n第二段1", "finance"],  # in train (with another label)
            ["s1", "财经新", "债券\n上涨", "finance"],  # in val
            ["s2", "科技新闻", "电脑\n新品", "tech"], ["s3", "体育快讯", "篮球", "sports"]]
    return {name: _write_csv(tmp_path / f"{name}.csv", rows) for name, rows in
            (("train", train), ("val", val), ("test", test))}


def test_given_splits_are_kept_deduplicated_and_cleared_of_cross_split_copies(tmp_path: Path):
    files = _given_split_files(tmp_path)
    out = tmp_path / "corpus"
    source = CorpusInput(kind="file", splits=GivenSplits(train=str(files["train"]), val=str(files["val"]),
                                                     test=str(files["test"])),
                         format=FileFormat(encoding="gb18030"), id_column="doc_id", label_column="category",
                         fields=TextFields(text_columns=("title",), pair_column="body"))
    stats = run(PrepareCorpusConfig(input=source, output_dir=str(out), log_to_mlflow=False))

    tables = {name: pq.read_table(out / f"{name}.parquet") for name in ("train", "val", "test")}
    assert tables["train"].column_names == ["id", "text", "text_pair", "label"]
    names = label_names_from_schema(tables["train"].schema)
    assert names == ["finance", "sports", "tech"] and json.loads((out / "labels.json").read_text()) == names
    assert all(label_names_from_schema(t.schema) == names for t in tables.values())
    train = tables["train"].to_pandas()
    assert len(train) == 12 and stats.duplicates_removed == 1  # t21 repeats t0 exactly
    row = train.set_index("id").loc["t3"]
    assert row["text"] == "体育新闻3" and row["text_pair"] == "第一段，\"比赛\" 第二段3"  # newlines normalised
    assert tables["val"].column("id").to_pylist() == ["v0", "v1", "v2"]
    assert sorted(tables["test"].column("id").to_pylist()) == ["s2", "s3"]  # s0 was in train, s1 in val
    assert stats.cross_split_removed == 2
    assert {(o["later"], o["earlier"], o["rows"]) for o in stats.cross_split} == {("test", "train", 1),
                                                                                   ("test", "val", 1)}
    assert "1 row(s) of test also in train: removed from test" in stats.lines()
    assert stats.rows_per_split_label["train"] == {"finance": 3, "sports": 8, "tech": 1}
    assert not (tmp_path / "pinyin").exists()  # Chinese -> pinyin pairs only for the shipped reviews, or when asked


def test_keep_reports_cross_split_copies_without_removing_them(tmp_path: Path):
    files = _given_split_files(tmp_path)
    source = CorpusInput(kind="file", splits=GivenSplits(train=str(files["train"]), val=str(files["val"]),
                                                     test=str(files["test"])),
                         format=FileFormat(encoding="gb18030"), label_column="category",
                         fields=TextFields(text_columns=("title", "body"), separator=" | "))
    stats = run(PrepareCorpusConfig(input=source, split=SplitSettings(cross_split_duplicates="keep"),
                                    output_dir=str(tmp_path / "corpus"), log_to_mlflow=False))
    test = pq.read_table(tmp_path / "corpus" / "test.parquet")
    assert test.num_rows == 4 and "text_pair" not in test.column_names
    assert "科技新闻 | 电脑 新品" in test.column("text").to_pylist()
    assert stats.cross_split_removed == 0 and len(stats.cross_split) == 2


def test_a_label_the_training_file_lacks_is_an_error_naming_the_file(tmp_path: Path):
    files = _given_split_files(tmp_path)
    _write_csv(files["val"], [["v9", "天气", "晴", "weather"]])
    source = CorpusInput(kind="file", splits=GivenSplits(train=str(files["train"]), val=str(files["val"]),
                                                     test=str(files["test"])),
                         format=FileFormat(encoding="gb18030"), label_column="category",
                         fields=TextFields(text_columns=("title",)))
    with pytest.raises(InputFormatError, match=r"val\.csv.*category.*1 row"):
        run(PrepareCorpusConfig(input=source, output_dir=str(tmp_path / "corpus"), log_to_mlflow=False))


def test_one_jsonl_file_with_an_id_column_is_split_by_hash_and_pairs_only_when_asked(tmp_path: Path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"rid": f"r{i}", "review": f"{'很好' if i % 3 else '很差'}的商品{i}号", "stars": "好" if i % 3 else "差"}
            for i in range(60)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    source = CorpusInput(kind="file", path=str(path), id_column="rid", label_column="stars",
                         fields=TextFields(text_columns=("review",)))
    config = PrepareCorpusConfig(input=source, output_dir=str(tmp_path / "corpus"), log_to_mlflow=False)
    stats = run(config)
    assert sum(stats.rows_per_split.values()) == 60
    ids = {i for split in ("train", "val", "test")
           for i in pq.read_table(tmp_path / "corpus" / f"{split}.parquet").column("id").to_pylist()}
    assert ids == {r["rid"] for r in rows}
    assert not (tmp_path / "pinyin").exists()
    from dataclasses import replace

    from jobs.corpus.prepare import Seq2SeqCorpusSettings
    run(replace(config, seq2seq=Seq2SeqCorpusSettings(enabled=True)))
    assert pq.read_table(tmp_path / "pinyin" / "train.parquet").num_rows > 0


def test_labels_with_stray_spaces_are_one_class_and_the_summary_says_so(tmp_path: Path):
    path = tmp_path / "reviews.csv"
    rows = [f"好评{i},positive" for i in range(10)] + [f"好评x{i},Positive " for i in range(3)]
    rows += [f"差评{i}, negative" for i in range(10)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    source = CorpusInput(kind="file", path=str(path))
    with pytest.raises(InputFormatError, match=r"equal up to case: 'Positive' \(3 row\(s\)\) and 'positive'"):
        run(PrepareCorpusConfig(input=source, output_dir=str(tmp_path / "refused"), log_to_mlflow=False))
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    out = tmp_path / "corpus"
    stats = run(PrepareCorpusConfig(input=dataclasses.replace(source, label_case="lower"), output_dir=str(out),
                                    log_to_mlflow=False))
    assert json.loads((out / "labels.json").read_text()) == ["negative", "positive"]  # two classes, not three
    assert stats.labels_stripped == 13 and stats.labels_lowered == 3
    assert "stripped surrounding whitespace from the labels of 13 rows (input.label_strip)" in stats.lines()
    assert json.loads((out / "stats.json").read_text())["labels_stripped"] == 13


def test_given_splits_whose_labels_differ_by_case_are_refused_naming_both(tmp_path: Path):
    (tmp_path / "train.csv").write_text("text,label\n好,positive\n差,negative\n", encoding="utf-8")
    (tmp_path / "val.csv").write_text("text,label\n很好,Positive\n很差,negative \n", encoding="utf-8")
    splits = GivenSplits(train=str(tmp_path / "train.csv"), val=str(tmp_path / "val.csv"),
                         test=str(tmp_path / "train.csv"))
    source = CorpusInput(kind="file", splits=splits)
    with pytest.raises(InputFormatError, match=r"val\.csv.*'Positive' differs from 'positive' only by case"):
        run(PrepareCorpusConfig(input=source, output_dir=str(tmp_path / "out"), log_to_mlflow=False))
