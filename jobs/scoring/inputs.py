"""What a scoring job reads: Parquet as it is, or a user's CSV / JSON Lines file staged as Parquet once.

The scoring pipeline reads Parquet (row groups are its unit of parallel reads and its quarantine
works on Arrow batches). A CSV or JSON Lines file, read with ``data_pipeline.readers`` (any
encoding, RFC 4180 quoting), is converted to one Parquet file of the columns the job needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from data_pipeline.paths import ParquetFiles, filesystem_for, join_path, resolve_parquet_files
from data_pipeline.quarantine import FileInfo, InputColumns
from data_pipeline.readers import FileFormat, file_format, read_table


def needs_staging(path: str, fmt: FileFormat) -> bool:
    """A single CSV or JSON Lines file (directories, globs and URIs are Parquet datasets)."""
    return "://" not in path and Path(path).is_file() and file_format(path, fmt) != "parquet"


def scoring_input(path: str, fmt: FileFormat, columns: InputColumns, staging: str) -> ParquetFiles:
    """The input as Parquet files; a CSV / JSON Lines file is written to ``staging`` (a local path or URI
    on storage every node sees, e.g. beside the outputs) and read from there."""
    if not needs_staging(path, fmt):
        return resolve_parquet_files(path)
    table = read_table(path, fmt, columns.names).select(columns.names)
    fs, base = filesystem_for(staging)
    fs.create_dir(base, recursive=True)
    staged = join_path(base, Path(path).stem + ".parquet")
    pq.write_table(table, staged, filesystem=fs)
    return resolve_parquet_files(join_path(staging, Path(path).stem + ".parquet"))


def source_fingerprints(path: str, fmt: FileFormat, infos: list[FileInfo]) -> list[dict]:
    """What identifies each input file for the manifest and for resuming: its footer fingerprint, or
    for a CSV / JSON Lines input the user's file (its staged Parquet copy is rewritten by every run)."""
    if not needs_staging(path, fmt):
        return [info.fingerprint() for info in infos]
    stat = os.stat(path)
    return [{"file": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "rows": sum(info.num_rows for info in infos)}]

