"""What a run read, as MLflow datasets: source, digest, schema and row counts, from metadata only.

A Parquet input is described from its footers (one small read per file, no rows): the digest is a
sha256 over each file's size, modification time and footer bytes (row counts, row-group sizes,
column statistics). It is a fingerprint, not a hash of the rows: the same files give the same
digest on every run and in a copy that keeps modification times (``cp -p``, ``rsync -t``), so runs
on the same data can be found by digest; a rewritten file gets a new one, even with the same rows.
A CSV / JSON Lines file (evaluate, batch_infer) is hashed whole: the jobs read it into memory anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.storage import retrying
from jobs.common.redaction import redact_text

DIGEST_CHARS = 16  # MLflow keeps at most 36 characters of a dataset digest
# Where each split of a training job goes in MLflow's dataset contexts.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class DatasetSummary:
    """One input of a run, described without reading its rows."""
    source: str  # the configured path, directory, glob or URI (credentials redacted)
    name: str
    digest: str
    num_rows: int | None  # None where unknown without reading the rows
    num_files: int
    num_bytes: int
    schema: tuple[tuple[str, str], ...]  # (column, Arrow type) in file order

    def profile(self) -> dict[str, int]:
        out = {"num_files": self.num_files, "num_bytes": self.num_bytes}
        return {"num_rows": self.num_rows, **out} if self.num_rows is not None else out


def _footer(handle, size: int) -> bytes:
    """The Parquet footer's bytes (metadata + length + magic): the file's last few kilobytes."""
    if size < 12:
        raise ValueError(f"{size} bytes is too small for a Parquet file")
    handle.seek(size - 8)
    tail = handle.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length + 8 > size:
        raise ValueError("no Parquet footer")
    handle.seek(size - 8 - length)
    return handle.read(length) + tail


def _read_footer(filesystem: pafs.FileSystem, path: str) -> tuple[int, bytes, pq.FileMetaData]:
    with filesystem.open_input_file(path) as handle:
        size = handle.size()
        footer = _footer(handle, size)
    return size, footer, pq.read_metadata(pa.BufferReader(b"PAR1" + footer))


def parquet_summary(path: str, files: ParquetFiles | None = None, name: str | None = None) -> DatasetSummary:
    """Describe a Parquet file, directory or glob (local or a URI) from its files' footers.

    ``files``: ``path`` already resolved (the job did it to read it), else resolved here.
    """
    files = files if files is not None else resolve_parquet_files(path)
    fs = files.filesystem
    infos = retrying(lambda: fs.get_file_info(list(files.paths)), f"stat the files of {path}")
    workers = 1 if isinstance(fs, pafs.LocalFileSystem) else 16  # object stores: a round trip each
    with ThreadPoolExecutor(max_workers=workers) as pool:
        footers = list(pool.map(lambda p: retrying(lambda: _read_footer(fs, p), f"read the footer of {p}"),
                                files.paths))
    digest = hashlib.sha256()
    for (size, footer, _), info in zip(footers, infos):
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        digest.update(f"{size}:{mtime}:{len(footer)}:".encode() + footer)
    rows = sum(metadata.num_rows for _, _, metadata in footers)
    size_total = sum(size for size, _, _ in footers)
    schema = footers[0][2].schema.to_arrow_schema() if footers else None
    source = path if "://" in path else str(Path(path).resolve())
    return DatasetSummary(source=redact_text(source), name=name or _default_name(source),
                          digest=digest.hexdigest()[:DIGEST_CHARS], num_rows=rows, num_files=len(files.paths),
                          num_bytes=size_total, schema=_columns(schema))


def file_sha256(path: str) -> str:
    """sha256 of a local file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_summary(path: str, num_rows: int | None, columns: list[str] | None = None,
                 name: str | None = None) -> DatasetSummary:
    """Describe one local file of another format (CSV, JSON Lines) by a hash of its bytes."""
    source = str(Path(path).resolve())
    return DatasetSummary(source=redact_text(source), name=name or _default_name(source),
                          digest=file_sha256(path)[:DIGEST_CHARS], num_rows=num_rows, num_files=1,
                          num_bytes=os.path.getsize(path), schema=tuple((c, "string") for c in columns or ()))


def input_summary(path: str, num_rows: int | None = None, columns: list[str] | None = None) -> DatasetSummary:
    """A Parquet input from its footers, anything else (a local CSV / JSON Lines file) by its bytes."""
    if "://" in path or os.path.isdir(path) or any(ch in path for ch in "*?[") or _is_parquet(path):
        return parquet_summary(path)
    return file_summary(path, num_rows, columns)


def _is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False


def _default_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1] or source


def _columns(schema: pa.Schema | None) -> tuple[tuple[str, str], ...]:
    return tuple((field.name, str(field.type)) for field in schema) if schema is not None else ()


# Arrow type -> MLflow column type (mlflow.types.DataType names); anything else is shown as a string.
_MLFLOW_TYPES = {"string": "string", "large_string": "string", "bool": "boolean", "int8": "integer",
                 "int16": "integer", "int32": "integer", "int64": "long", "uint8": "integer", "uint16": "integer",
                 "uint32": "long", "uint64": "long", "float": "float", "halffloat": "float", "double": "double",
                 "binary": "binary", "large_binary": "binary"}


def to_mlflow_dataset(summary: DatasetSummary):
    """An MLflow dataset holding only the summary (no rows): source, digest, schema and profile."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    class SummaryDataset(MetaDataset):
        """A MetaDataset that also shows its row counts (MLflow's run page reads the profile)."""

        @property
        def profile(self):
            return summary.profile()

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    try:
        with warnings.catch_warnings():  # a local path matches two equivalent local sources: MLflow warns
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(summary.source)
    except Exception:  # a scheme MLflow has no source type for
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(summary.source)
    schema = Schema([ColSpec(getattr(DataType, _MLFLOW_TYPES.get(kind, "string")), column)
                     for column, kind in summary.schema]) if summary.schema else None
    return SummaryDataset(source=source, name=summary.name, digest=summary.digest, schema=schema)


def log_datasets(entries: list[tuple[DatasetSummary, str]], client=None, run_id: str | None = None) -> None:
    """``(summary, context)`` pairs as the run's inputs: the active run's, or ``run_id``'s through ``client``."""
    import mlflow

    if not entries:
        return
    if client is None:
        mlflow.log_inputs([to_mlflow_dataset(s) for s, _ in entries], contexts=[c for _, c in entries],
                          tags_list=[None] * len(entries))
        return
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client.log_inputs(run_id, datasets=[DatasetInput(to_mlflow_dataset(s)._to_mlflow_entity(),
                                                     tags=[InputTag(MLFLOW_DATASET_CONTEXT, c)])
                                        for s, c in entries])

