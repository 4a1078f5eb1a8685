"""Validate Parquet inputs before any compute is spent.

Every problem names the file, the column and the number of offending rows. The same
row-level checks (``bad_row_masks``) serve strict validation (training: fail fast) and
quarantine (scoring: set bad rows aside with a reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.errors import InputDataError
from data_pipeline.paths import ParquetFiles
from data_pipeline.schema import ColumnSpec, TableSpec

READ_BATCH_ROWS = 65_536  # bounded memory while scanning large files


@dataclass(frozen=True)
class Problem:
    file: str
    column: str | None
    rows: int
    reason: str

    def __str__(self) -> str:
        column = f", column '{self.column}'" if self.column else ""
        return f"{self.file}{column}: {self.rows} row(s) {self.reason}"


@dataclass(frozen=True)
class ValidationReport:
    rows_per_file: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.rows_per_file.values())


class DataValidationError(InputDataError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"input validation failed ({len(problems)} problem(s)):\n  {lines}")


def _type_matches(arrow_type: pa.DataType, spec: ColumnSpec) -> bool:
    if spec.kind == "string":
        return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    return pa.types.is_integer(arrow_type)


def schema_problems(file: str, schema: pa.Schema, num_rows: int, spec: TableSpec) -> list[Problem]:
    problems = []
    for column in spec.columns:
        index = schema.get_field_index(column.name)
        if index < 0:
            problems.append(Problem(file, column.name, num_rows,
                                    f"lack the required column (file has: {', '.join(schema.names)})"))
        elif not _type_matches(schema.field(index).type, column):
            problems.append(Problem(file, column.name, num_rows,
                                    f"have type {schema.field(index).type}, expected {column.kind}"))
    return problems


def bad_row_masks(batch: pa.RecordBatch | pa.Table, spec: TableSpec,
                  label_set: Iterable[int] | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Boolean masks of bad rows per (column, reason); assumes the schema already matches."""
    masks: dict[tuple[str, str], np.ndarray] = {}
    for column in spec.columns:
        values = batch.column(column.name)
        is_null = values.is_null().to_numpy(zero_copy_only=False)
        if is_null.any():
            masks[(column.name, "are null")] = is_null
        if column.nonempty:
            blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0).fill_null(False)
            blank = blank.to_numpy(zero_copy_only=False)
            if blank.any():
                masks[(column.name, "are empty or whitespace only")] = blank
        if column.name == "label" and label_set is not None:
            allowed = pa.array(sorted(label_set), type=values.type)
            outside = pc.invert(pc.is_in(values, value_set=allowed)).fill_null(False)
            outside = outside.to_numpy(zero_copy_only=False) & ~is_null  # nulls are reported as nulls, once
            if outside.any():
                masks[(column.name, f"have a label outside {sorted(label_set)}")] = outside
    return masks


def validate_files(files: ParquetFiles, spec: TableSpec, label_set: Iterable[int] | None = None,
                   display_names: dict[str, str] | None = None) -> ValidationReport:
    """Scan every file (only the needed columns, in bounded batches); raise on any problem."""
    label_set = None if label_set is None else set(label_set)
    problems: list[Problem] = []
    rows_per_file: dict[str, int] = {}
    for path in files.paths:
        shown = (display_names or {}).get(path, files.uri_prefix + path)
        try:
            with files.filesystem.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                num_rows = parquet.metadata.num_rows
                rows_per_file[shown] = num_rows
                found = schema_problems(shown, parquet.schema_arrow, num_rows, spec)
                problems.extend(found)
                if found:
                    continue
                counts: dict[tuple[str, str], int] = {}
                for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=spec.names):
                    for key, mask in bad_row_masks(batch, spec, label_set).items():
                        counts[key] = counts.get(key, 0) + int(mask.sum())
                problems.extend(Problem(shown, col, n, reason) for (col, reason), n in counts.items())
        except (OSError, pa.ArrowException) as exc:
            problems.append(Problem(shown, None, rows_per_file.get(shown, 0), f"unreadable as Parquet ({exc})"))
    if problems:
        raise DataValidationError(problems)
    return ValidationReport(rows_per_file)
