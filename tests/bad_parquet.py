"""Parquet files with bad rows and corrupt pages, shared by the quarantine tests (unit and integration).

Importable as ``bad_parquet`` from any test: ``tests/`` is on sys.path through its conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.quarantine import EMPTY_TEXT, NULL_TEXT, UNDECODABLE_TEXT

LONG_TEXT = "质量很好" * 100  # 400 characters: over any max_length used here


def write_bad_rows(path: Path) -> dict[str, str | None]:
    """A file whose text column is binary, holding each kind of bad row; returns id -> expected reason."""
    rows = {"b-ok": ("很好".encode(), None), "b-undecodable": (b"\xff\xfe\x00bad", UNDECODABLE_TEXT),
            "b-null": (None, NULL_TEXT), "b-blank": (" \t\u3000 ".encode(), EMPTY_TEXT),
            "b-empty": (b"", EMPTY_TEXT), "b-long": (LONG_TEXT.encode(), None)}
    table = pa.table({"id": list(rows), "text": pa.array([v[0] for v in rows.values()], pa.binary())})
    pq.write_table(table, path)
    return {k: v[1] for k, v in rows.items()}


def corrupt_data_page(path: Path) -> None:
    """Keep the footer valid but overwrite the first page header: readers fail only when reading data."""
    raw = bytearray(path.read_bytes())
    raw[4:60] = b"\xde\xad\xbe\xef" * 14
    path.write_bytes(bytes(raw))
