"""Tests for data_pipeline/validation.py and data_pipeline/paths.py on small local Parquet files."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import validation
from data_pipeline.paths import resolve_parquet_files
from data_pipeline.schema import SEQ2SEQ_SPEC, classification_spec
from data_pipeline.validation import DataValidationError, bad_row_masks, validate_files

SPEC = classification_spec()
LABELS = {0, 1}


def write(path: Path, columns: dict, schema: pa.Schema | None = None, **kwargs) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, **kwargs)
    return str(path)


def clean_columns(n: int = 4) -> dict:
    return {"id": [f"r{i}" for i in range(n)], "text": [f"评论{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}


def validate(path, spec=SPEC, labels=LABELS):
    return validate_files(resolve_parquet_files(str(path)), spec, labels)


def problem_of(path, **kwargs) -> tuple[DataValidationError, str]:
    with pytest.raises(DataValidationError) as info:
        validate(path, **kwargs)
    return info.value, str(info.value)


# ---- validate_files ---------------------------------------------------------------------------

def test_clean_file_passes_and_reports_rows(tmp_path):
    path = write(tmp_path / "ok.parquet", clean_columns(5))
    report = validate(path)
    assert report.rows_per_file == {path: 5}
    assert report.rows == 5


def test_clean_directory_counts_rows_per_file(tmp_path):
    a = write(tmp_path / "d" / "a.parquet", clean_columns(3))
    b = write(tmp_path / "d" / "b.parquet", clean_columns(7))
    report = validate(tmp_path / "d")
    assert report.rows_per_file == {a: 3, b: 7} and report.rows == 10


def test_missing_column(tmp_path):
    path = write(tmp_path / "nolabel.parquet", {"id": ["a", "b", "c"], "text": ["x", "y", "z"]})
    error, message = problem_of(path)
    assert len(error.problems) == 1
    assert f"{path}, column 'label': 3 row(s) lack the required column" in message
    assert "file has: id, text" in message


def test_text_stored_as_int(tmp_path):
    path = write(tmp_path / "t.parquet", {"id": ["a", "b", "c"], "text": [1, 2, 3], "label": [0, 1, 0]})
    error, message = problem_of(path)
    assert [(p.column, p.rows) for p in error.problems] == [("text", 3)]
    assert f"{path}, column 'text': 3 row(s) have type int64, expected string" in message


def test_label_stored_as_string(tmp_path):
    path = write(tmp_path / "l.parquet", {"id": ["a", "b"], "text": ["x", "y"], "label": ["pos", "neg"]})
    error, message = problem_of(path)
    assert [(p.column, p.rows) for p in error.problems] == [("label", 2)]
    assert f"{path}, column 'label': 2 row(s) have type string, expected int" in message


def test_other_string_and_integer_widths_are_accepted(tmp_path):
    schema = pa.schema([("id", pa.large_string()), ("text", pa.large_string()), ("label", pa.int8())])
    path = write(tmp_path / "wide.parquet", clean_columns(4), schema=schema)
    assert validate(path).rows == 4


def test_null_text(tmp_path):
    cols = clean_columns(5)
    cols["text"] = ["a", None, "b", None, None]
    path = write(tmp_path / "n.parquet", cols)
    error, message = problem_of(path)
    assert [(p.column, p.rows, p.reason) for p in error.problems] == [("text", 3, "are null")]
    assert f"{path}, column 'text': 3 row(s) are null" in message


def test_empty_and_whitespace_text(tmp_path):
    cols = clean_columns(6)
    cols["text"] = ["", "  ", "\t\n", "\u3000", "ok", " 好 "]
    path = write(tmp_path / "e.parquet", cols)
    error, message = problem_of(path)
    assert [(p.column, p.rows) for p in error.problems] == [("text", 4)]
    assert f"{path}, column 'text': 4 row(s) are empty or whitespace only" in message


def test_empty_id_is_allowed_but_null_id_is_not(tmp_path):
    cols = clean_columns(3)
    cols["id"] = ["", None, "x"]
    error, message = problem_of(write(tmp_path / "i.parquet", cols))
    assert [(p.column, p.rows, p.reason) for p in error.problems] == [("id", 1, "are null")]


def test_label_outside_the_label_set(tmp_path):
    cols = clean_columns(6)
    cols["label"] = [0, 1, 2, -1, 1, 7]
    path = write(tmp_path / "o.parquet", cols)
    error, message = problem_of(path)
    assert [(p.column, p.rows) for p in error.problems] == [("label", 3)]
    assert f"{path}, column 'label': 3 row(s) have a label outside [0, 1]" in message
    # Without a label set only the type and nulls are checked.
    assert validate(path, labels=None).rows == 6


def test_null_label_is_counted_once(tmp_path):
    cols = clean_columns(4)
    cols["label"] = [0, None, 1, None]
    error, message = problem_of(write(tmp_path / "nl.parquet", cols))
    assert [(p.column, p.rows, p.reason) for p in error.problems] == [("label", 2, "are null")]


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    error, message = problem_of(path)
    assert len(error.problems) == 1
    assert error.problems[0].file == str(path) and error.problems[0].column is None
    assert str(path) in message and "unreadable as Parquet" in message


def test_truncated_file(tmp_path):
    good = write(tmp_path / "g.parquet", clean_columns(50))
    data = Path(good).read_bytes()
    path = tmp_path / "cut.parquet"
    path.write_bytes(data[: len(data) // 2])
    error, message = problem_of(path)
    assert f"{path}" in message and "unreadable as Parquet" in message


def test_all_problems_in_all_files_are_reported_at_once(tmp_path):
    d = tmp_path / "many"
    write(d / "a_clean.parquet", clean_columns(4))
    bad = clean_columns(5)
    bad["text"] = ["x", None, "", " ", "y"]
    bad["label"] = [0, 1, 3, 3, 3]
    b = write(d / "b_bad_rows.parquet", bad)
    c = write(d / "c_no_text.parquet", {"id": ["a", "b"], "label": [0, 1]})
    (d / "d_garbage.parquet").write_bytes(b"\x00\x01garbage")
    error, message = problem_of(d)
    found = {(Path(p.file).name, p.column, p.rows) for p in error.problems}
    assert found == {("b_bad_rows.parquet", "text", 1),  # null
                     ("b_bad_rows.parquet", "text", 2),  # empty or blank
                     ("b_bad_rows.parquet", "label", 3),  # outside {0, 1}
                     ("c_no_text.parquet", "text", 2),  # missing column
                     ("d_garbage.parquet", None, 0)}
    assert "5 problem(s)" in message
    assert "a_clean.parquet" not in message
    assert f"{b}, column 'label': 3 row(s) have a label outside" in message
    assert f"{c}, column 'text': 2 row(s) lack the required column" in message


def test_counts_are_summed_over_read_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "READ_BATCH_ROWS", 3)
    n = 20
    cols = clean_columns(n)
    cols["text"] = [None if i % 4 == 0 else ("" if i % 5 == 0 else f"t{i}") for i in range(n)]
    path = write(tmp_path / "batches.parquet", cols, row_group_size=7)
    error, _ = problem_of(path)
    counts = {p.reason: p.rows for p in error.problems}
    assert counts == {"are null": 5, "are empty or whitespace only": 3}  # nulls 0,4,8,12,16; blanks 5,10,15


def test_display_names_replace_paths(tmp_path):
    cols = clean_columns(2)
    cols["label"] = [0, 9]
    path = write(tmp_path / "x.parquet", cols)
    with pytest.raises(DataValidationError) as info:
        validate_files(resolve_parquet_files(path), SPEC, LABELS, display_names={path: "input #1"})
    assert "input #1, column 'label': 1 row(s)" in str(info.value)


def test_other_specs(tmp_path):
    unlabelled = write(tmp_path / "u.parquet", {"id": ["a"], "text": ["x"]})
    assert validate(unlabelled, spec=classification_spec(with_label=False), labels=None).rows == 1
    custom = write(tmp_path / "c.parquet", {"id": ["a"], "review": ["x"], "label": [1]})
    assert validate(custom, spec=classification_spec("review")).rows == 1
    pairs = write(tmp_path / "s.parquet", {"id": ["a", "b"], "source": ["中", "文"], "target": ["zhong", " "]})
    error, message = problem_of(pairs, spec=SEQ2SEQ_SPEC, labels=None)
    assert f"{pairs}, column 'target': 1 row(s) are empty or whitespace only" in message


def test_bad_row_masks_mark_the_offending_rows():
    table = pa.table({"id": ["a", "b", "c", "d"], "text": ["x", None, " ", "y"], "label": [0, 1, 1, 5]})
    masks = bad_row_masks(table, SPEC, LABELS)
    assert {k: v.tolist() for k, v in masks.items()} == {
        ("text", "are null"): [False, True, False, False],
        ("text", "are empty or whitespace only"): [False, False, True, False],
        ("label", "have a label outside [0, 1]"): [False, False, False, True],
    }
    assert bad_row_masks(pa.table(clean_columns(3)), SPEC, LABELS) == {}


# ---- resolve_parquet_files --------------------------------------------------------------------

def test_resolve_a_single_file(tmp_path):
    path = write(tmp_path / "one.parquet", clean_columns(1))
    files = resolve_parquet_files(path)
    assert files.paths == (path,)
    assert files.uri_prefix == "" and files.uris() == [path]


def test_resolve_a_relative_path_gives_an_absolute_one(tmp_path, monkeypatch):
    write(tmp_path / "rel" / "one.parquet", clean_columns(1))
    monkeypatch.chdir(tmp_path)
    assert resolve_parquet_files("rel/one.parquet").paths == (str(tmp_path / "rel" / "one.parquet"),)
    assert resolve_parquet_files("rel").paths == (str(tmp_path / "rel" / "one.parquet"),)


def test_resolve_a_directory_recursively_skipping_hidden_and_rejected(tmp_path):
    d = tmp_path / "dataset"
    keep = [write(d / "part-1.parquet", clean_columns(1)), write(d / "part-0.parquet", clean_columns(1)),
            write(d / "year=2024" / "part-2.parquet", clean_columns(1))]
    write(d / "_rejected" / "part-0.parquet", clean_columns(1))
    write(d / ".tmp" / "part-9.parquet", clean_columns(1))
    write(d / "sub" / "_staging" / "x.parquet", clean_columns(1))
    write(d / ".hidden.parquet", clean_columns(1))
    write(d / "_metadata.parquet", clean_columns(1))
    (d / "_SUCCESS").write_text("")
    (d / "notes.txt").write_text("not data")
    files = resolve_parquet_files(str(d))
    assert files.paths == tuple(sorted(keep))
    assert resolve_parquet_files(str(d) + os.sep).paths == files.paths  # trailing slash


def test_resolve_a_glob(tmp_path):
    d = tmp_path / "g"
    a = write(d / "a-1.parquet", clean_columns(1))
    b = write(d / "a-2.parquet", clean_columns(1))
    write(d / "b-1.parquet", clean_columns(1))
    nested = write(d / "x" / "a-3.parquet", clean_columns(1))
    assert resolve_parquet_files(str(d / "a-*.parquet")).paths == (a, b)
    assert resolve_parquet_files(str(d / "**" / "a-*.parquet")).paths == tuple(sorted([a, b, nested]))


def test_resolve_a_missing_path_names_it(tmp_path):
    missing = str(tmp_path / "nope" / "train.parquet")
    with pytest.raises(FileNotFoundError, match="no such file") as info:
        resolve_parquet_files(missing)
    assert missing in str(info.value)
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(FileNotFoundError, match="matches no files") as info:
        resolve_parquet_files(pattern)
    assert pattern in str(info.value)
    empty = tmp_path / "empty"
    (empty / "_rejected").mkdir(parents=True)
    write(empty / "_rejected" / "r.parquet", clean_columns(1))
    with pytest.raises(FileNotFoundError, match="holds no .parquet files") as info:
        resolve_parquet_files(str(empty))
    assert str(empty) in str(info.value)


def test_a_null_label_has_one_reason_only():
    # Quarantine gives each bad row its reasons: a null label is null, not also "outside the label set".
    table = pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": pa.array([None, 1, 4], pa.int64())})
    masks = bad_row_masks(table, SPEC, LABELS)
    assert masks[("label", "are null")].tolist() == [True, False, False]
    assert masks[("label", "have a label outside [0, 1]")].tolist() == [False, False, True]
