"""Quarantine of unscorable rows and files: pure pyarrow checks (batch_infer's part: tests/integration).

Every row that enters comes out once, scored or in ``_rejected/`` with its reason and source
file; a file that cannot be read fails with a message naming it.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import resolve_parquet_files
from data_pipeline.quarantine import (EMPTY_TEXT, FILE_ERROR, NULL_ID, UNDECODABLE_TEXT, WRONG_TYPE_TEXT,
                                      InputFileError, ReadUnit, ScoringGroup, inspect_files, read_tagged, read_units,
                                      tag_rows)

from bad_parquet import corrupt_data_page, write_bad_rows


def test_tag_rows_gives_each_bad_row_one_reason(tmp_path: Path):
    expected = write_bad_rows(tmp_path / "bad.parquet")
    tagged = tag_rows(pq.read_table(tmp_path / "bad.parquet"), "bad.parquet", "text", group="g")
    got = dict(zip(tagged.column("id").to_pylist(), tagged.column("reject_reason").to_pylist()))
    assert got == expected
    assert tagged.column("scorable").to_pylist() == [r is None for r in expected.values()]
    texts = dict(zip(tagged.column("id").to_pylist(), tagged.column("text").to_pylist()))
    assert texts["b-ok"] == "很好" and texts["b-undecodable"] == "" and texts["b-null"] == ""
    assert set(tagged.column("source_file").to_pylist()) == {"bad.parquet"}
    assert set(tagged.column("scoring_group").to_pylist()) == {"g"}
    assert tagged.schema.field("text").type == pa.string()


def test_tag_rows_null_ids_wrong_types_and_integer_ids():
    table = pa.table({"id": pa.array([1, None, 3], pa.int64()), "text": ["a", "b", "  "]})
    tagged = tag_rows(table, "f", "text")
    assert tagged.column("id").to_pylist() == ["1", None, "3"]
    assert tagged.column("reject_reason").to_pylist() == [None, NULL_ID, EMPTY_TEXT]
    wrong = tag_rows(pa.table({"id": ["x", "y"], "text": [1.5, 2.5]}), "f", "text")
    assert wrong.column("reject_reason").to_pylist() == [WRONG_TYPE_TEXT] * 2
    assert wrong.column("scorable").to_pylist() == [False, False]


def test_invalid_utf8_inside_a_string_column_is_rejected_not_crashing():
    raw = pa.array([b"fine", b"\xc3\x28"], pa.binary()).view(pa.string())  # second value is invalid UTF-8
    tagged = tag_rows(pa.table({"id": ["a", "b"], "text": raw}), "f", "text")
    assert tagged.column("reject_reason").to_pylist() == [None, UNDECODABLE_TEXT]


def test_footer_problems_name_the_file(tmp_path: Path):
    pq.write_table(pa.table({"id": ["a"], "text": ["ok"]}), tmp_path / "good.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(InputFileError, match="garbage.parquet: unreadable as Parquet"):
        inspect_files(resolve_parquet_files(str(tmp_path)), "text")
    (tmp_path / "garbage.parquet").unlink()
    pq.write_table(pa.table({"id": ["a"], "body": ["ok"]}), tmp_path / "nocol.parquet")
    with pytest.raises(InputFileError, match=r"nocol.parquet: lacks column\(s\) text"):
        inspect_files(resolve_parquet_files(str(tmp_path)), "text")


def test_a_corrupt_data_page_becomes_an_error_row_naming_the_file(tmp_path: Path):
    path = tmp_path / "page.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(50)], "text": ["好"] * 50}), path)
    corrupt_data_page(path)
    files = resolve_parquet_files(str(path))
    [info] = inspect_files(files, "text")  # the footer still reads
    [unit] = read_units([ScoringGroup("p", files, (info,))], rows_per_task=1000)
    out = pa.concat_tables(read_tagged(files.filesystem, unit.file.path, unit.file.display, unit.row_groups,
                                       "text", 16, unit.group))
    reasons = out.column("reject_reason").to_pylist()
    assert reasons[-1].startswith(FILE_ERROR) and "page.parquet" in reasons[-1]
    assert isinstance(unit, ReadUnit) and out.column("scoring_group").to_pylist()[-1] == "p"


def test_row_groups_are_packed_into_read_units(tmp_path: Path):
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(100)], "text": ["x"] * 100}), path, row_group_size=10)
    files = resolve_parquet_files(str(path))
    units = read_units([ScoringGroup("", files, tuple(inspect_files(files, "text")))], rows_per_task=25)
    assert [u.rows for u in units] == [20, 20, 20, 20, 20]
    assert sorted(i for u in units for i in u.row_groups) == list(range(10))


# ------------------------------------------------------------------ batch_infer on a real local Ray

