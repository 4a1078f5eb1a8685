"""tools.make_incoming: the example producer of daily partitions for jobs.score_partitions."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest

from tools.make_incoming import MARKER, main, write_partitions


def _table(folder):
    return pq.read_table(folder / "part-0.parquet").to_pydict()


def test_partitions_are_complete_distinct_and_marked(tmp_path):
    assert main(["--out", str(tmp_path), "--days", "2", "--rows", "40"]) == 0
    days = sorted(p.name for p in tmp_path.iterdir())
    assert days == ["date=2026-01-01", "date=2026-01-02"]
    tables = [_table(tmp_path / day) for day in days]
    for day, table in zip(days, tables):
        assert (tmp_path / day / MARKER).exists()
        assert len(table["id"]) == 40 and len(set(table["id"])) == 40
        assert all(isinstance(t, str) and t for t in table["text"])
    assert not set(tables[0]["id"]) & set(tables[1]["id"])  # ids unique across days
    assert not set(tables[0]["text"]) & set(tables[1]["text"])  # each day new data


def test_more_days_add_only_the_new_ones_and_redo_an_unmarked_one(tmp_path):
    start = dt.date(2026, 3, 1)
    write_partitions(str(tmp_path), 2, 10, start)
    first = tmp_path / "date=2026-03-01"
    before = (first / "part-0.parquet").stat().st_mtime_ns
    (tmp_path / "date=2026-03-02" / MARKER).unlink()  # a producer that died before its marker
    done = write_partitions(str(tmp_path), 3, 10, start)
    assert done == {"date=2026-03-01": "kept", "date=2026-03-02": "written", "date=2026-03-03": "written"}
    assert (first / "part-0.parquet").stat().st_mtime_ns == before  # published data is never rewritten
    assert all((tmp_path / name / MARKER).exists() for name in done)


def test_too_many_rows_are_refused_with_what_ships(tmp_path):
    with pytest.raises(ValueError, match="the package ships"):
        write_partitions(str(tmp_path), 2, 10**6, dt.date(2026, 1, 1))
    assert not any(tmp_path.iterdir())
