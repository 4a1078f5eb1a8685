"""Quarantine for scoring: read Parquet once, tag every row that cannot be scored, never drop one.

Scoring must not fail a whole corpus because of a few bad rows, nor silently lose them. The
read stage of the scoring pipeline (``ScoringSource``, a Ray Data ``Datasource``) normalises
each file's columns and tags every row with a reject reason, in the same pass that reads it:

- id (``InputColumns.id``, written as ``id``): string or integer (cast to string) or UTF-8 bytes;
  a null id is a bad row. Without an id column, ids are derived from the row's content.
- text: string, or bytes decoded as UTF-8 (undecodable rows are bad rows), or any other type
  (every row of that file is bad: ``wrong_type_text``); null, empty or whitespace-only text is
  a bad row (the checks are ``data_pipeline.validation.bad_row_masks``, shared with training).
- an optional second text (``InputColumns.pair``, a sentence pair): decoded as the text; null
  or empty is allowed (encoded as an empty second segment).

Tagged rows keep flowing (their text replaced by ``""``) so the predictor can skip them and the
sink can write them to ``_rejected/``: rows out + rows rejected = rows in, by construction.

File-level faults are different: a file whose footer or data pages cannot be read, or that
lacks the ``id`` / text column. ``ReadSettings.on_unreadable_file`` says what happens to it:

- ``fail`` (the default): it fails the whole group of files it belongs to (a partition), with a
  message naming the file. ``inspect_files`` reads only footers (no data pass), so most corrupt
  files fail on the driver before any compute (``InputFileError``). A fault found later, in a data
  page, must not fail the other groups scored by the same pipeline: the read task emits one error
  row for it (``reject_reason`` starting with ``FILE_ERROR``) that travels to the sink, which marks
  that group failed; nothing of a failed group is ever committed.
- ``quarantine`` (Spark's ``ignoreCorruptFiles``): the rest is scored; the file is listed with its
  reason and the rows it held that were not read (``UnreadableFile``; a footer that cannot be read
  gives no row count), and those rows are counted apart: rows out + rows rejected + rows unreadable
  = rows in. A data-page fault leaves the rows of the row groups read before it scored.

A storage error is not a corrupt file: reads are retried when the error is transient
(``data_pipeline.storage``, per row group, so nothing is yielded twice), and one that still fails
raises (``StorageError``): the pipeline fails, no file is blamed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline.paths import ParquetFiles, mtime_ns
from data_pipeline.schema import classification_spec
from data_pipeline.storage import DEFAULT_RETRY, StorageRetry, is_storage_fault, retrying
from data_pipeline.validation import bad_row_masks

# Reject reasons, highest priority first: a row gets the first that applies.
UNDECODABLE_ID = "undecodable_id"
WRONG_TYPE_TEXT = "wrong_type_text"
UNDECODABLE_TEXT = "undecodable_text"
NULL_ID = "null_id"
NULL_TEXT = "null_text"
EMPTY_TEXT = "empty_text"
REASONS = (UNDECODABLE_ID, WRONG_TYPE_TEXT, UNDECODABLE_TEXT, NULL_ID, NULL_TEXT, EMPTY_TEXT)

# Columns of the tagged stream leaving the read stage.
ID, SOURCE_FILE, REJECT_REASON, SCORABLE, GROUP = "id", "source_file", "reject_reason", "scorable", "scoring_group"
TAG_COLUMNS = (ID, SOURCE_FILE, REJECT_REASON, SCORABLE, GROUP)  # carried from the read stage to the sink
FILE_ERROR = "__file_error__:"  # prefix of the in-band error row's reject_reason


class InputFileError(RuntimeError):
    """A whole file cannot be scored (unreadable, corrupt, missing column): names the file."""

    def __init__(self, file: str, problem: str):
        self.file = file
        self.problem = problem
        super().__init__(f"{file}: {problem}")

    def __reduce__(self):  # survives pickling through Ray
        return (InputFileError, (self.file, self.problem))


@dataclass(frozen=True)
class InputColumns:
    """Which input columns hold the row id, the text and an optional second text (a sentence pair)."""
    text: str = "text"
    id: str | None = "id"  # None: ids derived from the content (text and pair)
    pair: str | None = None

    @classmethod
    def of(cls, columns: InputColumns | str) -> InputColumns:
        return columns if isinstance(columns, InputColumns) else cls(text=columns)

    @property
    def names(self) -> list[str]:
        return [c for c in (self.id, self.text, self.pair) if c is not None]


@dataclass(frozen=True, kw_only=True)
class ReadSettings:
    """How the scoring pipeline reads its Parquet input, and what it does with a file it cannot read."""
    rows_per_task: int = 262_144  # row groups are packed into read tasks of about this many rows
    batch_rows: int = 8192  # rows per block leaving a read task (bounded memory per task)
    # A corrupt or unreadable input file: fail its group (a partition, or the whole run), or quarantine it
    # (score the rest; the file, its reason and its unread rows are listed in the manifest and the counts).
    on_unreadable_file: Literal["fail", "quarantine"] = "fail"


@dataclass(frozen=True)
class UnreadableFile:
    """An input file (or the row groups of it from a fault on) that could not be read, quarantined."""
    file: str  # URI or absolute path
    reason: str
    rows: int | None  # rows not read; None when even the footer could not be read
    row_groups: tuple[int, ...] | None = None  # the row groups not read; None: the whole file

    def as_dict(self) -> dict:
        return {"file": self.file, "reason": self.reason, "rows": self.rows,
                "row_groups": None if self.row_groups is None else list(self.row_groups)}


@dataclass(frozen=True)
class FileInfo:
    """What the footer and the filesystem say about one input file (no data read)."""
    path: str  # filesystem path
    display: str  # URI or absolute path, written as ``source_file``
    size: int
    mtime_ns: int
    num_rows: int
    row_group_rows: tuple[int, ...]
    row_group_bytes: tuple[int, ...]  # uncompressed, for Ray Data's memory estimates

    def fingerprint(self) -> dict:
        return {"file": self.display, "size": self.size, "mtime_ns": self.mtime_ns, "rows": self.num_rows}


def _check_columns(display: str, schema: pa.Schema, columns: InputColumns) -> None:
    missing = [c for c in columns.names if schema.get_field_index(c) < 0]
    if missing:
        raise InputFileError(display, f"lacks column(s) {', '.join(missing)} (file has: {', '.join(schema.names)})")
    if columns.id is None:
        return
    id_type = schema.field(columns.id).type
    if pa.types.is_dictionary(id_type):
        id_type = id_type.value_type
    if not (_is_stringish(id_type) or _is_binaryish(id_type) or pa.types.is_integer(id_type)):
        raise InputFileError(display, f"column {columns.id} has type {id_type}, expected string or integer")


def inspect_file(files: ParquetFiles, path: str, columns: InputColumns | str,
                 retry: StorageRetry = DEFAULT_RETRY) -> FileInfo:
    display = files.uri_prefix + path

    def footer():
        info = files.filesystem.get_file_info(path)
        with files.filesystem.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            return info, parquet.metadata, parquet.schema_arrow
    try:
        info, metadata, schema = retrying(footer, f"read the footer of {display}", retry)
    except (OSError, pa.ArrowException) as exc:
        if is_storage_fault(exc):
            raise  # the store's fault (retried already), not the file's
        raise InputFileError(display, f"unreadable as Parquet ({exc})") from None
    _check_columns(display, schema, InputColumns.of(columns))
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    return FileInfo(path=path, display=display, size=int(info.size or 0), mtime_ns=mtime_ns(info),
                    num_rows=metadata.num_rows, row_group_rows=tuple(g.num_rows for g in groups),
                    row_group_bytes=tuple(int(g.total_byte_size) for g in groups))


def inspect_inputs(files: ParquetFiles, columns: InputColumns | str, on_unreadable: str = "fail",
                   retry: StorageRetry = DEFAULT_RETRY) -> tuple[list[FileInfo], list[UnreadableFile]]:
    """Footers of every file (threads: on object stores each footer is a round trip), and the files quarantined.

    With ``on_unreadable="fail"`` the first ``InputFileError`` in path order is raised, so the
    message names a file; with ``quarantine`` such files are returned apart, in path order.
    """
    workers = 1 if isinstance(files.filesystem, pafs.LocalFileSystem) else 16
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(inspect_file, files, p, columns, retry) for p in files.paths]
        infos, unreadable = [], []
        for future in futures:
            try:
                infos.append(future.result())
            except InputFileError as exc:
                if on_unreadable != "quarantine":
                    raise
                unreadable.append(UnreadableFile(exc.file, exc.problem, None))
        return infos, unreadable


def inspect_files(files: ParquetFiles, columns: InputColumns | str,
                  retry: StorageRetry = DEFAULT_RETRY) -> list[FileInfo]:
    """Footers of every file; the first ``InputFileError`` in path order is raised, naming its file."""
    return inspect_inputs(files, columns, "fail", retry)[0]


def _is_stringish(tp: pa.DataType) -> bool:
    return pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_string_view(tp)


def _is_binaryish(tp: pa.DataType) -> bool:
    return (pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_fixed_size_binary(tp)
            or pa.types.is_binary_view(tp))


def _decode(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """String array and a mask of rows whose bytes are not valid UTF-8 (those become null)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    n = len(values)
    if _is_stringish(values.type):
        values = values.cast(pa.string())
        try:
            values.validate(full=True)  # Parquet readers do not check UTF-8 of string columns
            return values, np.zeros(n, dtype=bool)
        except pa.ArrowInvalid:
            values = values.view(pa.binary())
    try:
        return values.cast(pa.string()), np.zeros(n, dtype=bool)  # vectorised, checks UTF-8
    except pa.ArrowInvalid:
        pass
    decoded, bad = [], np.zeros(n, dtype=bool)  # slow path: only for files holding bad bytes
    for i, raw in enumerate(values.cast(pa.binary()).to_pylist()):
        if raw is None:
            decoded.append(None)
            continue
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
            bad[i] = True
    return pa.array(decoded, type=pa.string()), bad


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    values = batch.column(name)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _decode_text(raw: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Strings, undecodable rows, and rows of a wrong type (all of them, for a non-text column)."""
    n = len(raw)
    value_type = raw.type.value_type if pa.types.is_dictionary(raw.type) else raw.type
    if _is_stringish(value_type) or _is_binaryish(value_type):
        texts, undecodable = _decode(raw)
        return texts, undecodable, np.zeros(n, dtype=bool)
    return pa.nulls(n, pa.string()), np.zeros(n, dtype=bool), np.ones(n, dtype=bool)


def content_ids(texts: pa.Array, pairs: pa.Array | None) -> pa.Array:
    """Ids derived from the content: the first 16 hex digits of SHA-1 of the text (and pair)."""
    joined = texts.to_pylist() if pairs is None else [f"{a}\x1f{b}" for a, b in zip(texts.to_pylist(),
                                                                                     pairs.to_pylist())]
    return pa.array([None if text is None else hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
                     for text in joined], pa.string())


def tag_rows(batch: pa.RecordBatch | pa.Table, source_file: str, columns: InputColumns | str,
             group: str = "") -> pa.Table:
    """Normalise one batch of a file and tag its bad rows; vectorised except for undecodable bytes.

    Output columns: ``id`` (string), the text column (string, ``""`` where rejected), the pair
    column when there is one (string, ``""`` where null or rejected), ``source_file``,
    ``reject_reason`` (null when the row can be scored), ``scorable`` (bool), ``scoring_group``
    (which output the row belongs to, e.g. its partition).
    """
    columns = InputColumns.of(columns)
    n = batch.num_rows
    masks: dict[str, np.ndarray] = {}
    texts, masks[UNDECODABLE_TEXT], masks[WRONG_TYPE_TEXT] = _decode_text(_column(batch, columns.text))
    pairs = None
    if columns.pair is not None:
        pairs, bad_pair, wrong_pair = _decode_text(_column(batch, columns.pair))
        masks[UNDECODABLE_TEXT] |= bad_pair
        masks[WRONG_TYPE_TEXT] |= wrong_pair
    if columns.id is None:
        ids = content_ids(texts, pairs)
    else:
        raw_id = _column(batch, columns.id)
        if pa.types.is_integer(raw_id.type):
            ids = raw_id.cast(pa.string())
        else:
            ids, masks[UNDECODABLE_ID] = _decode(raw_id)
    spec = classification_spec(columns.text, with_label=False)
    checked = pa.table({ID: ids, columns.text: texts})
    for (column, problem), mask in bad_row_masks(checked, spec).items():
        if "null" in problem:
            reason = NULL_ID if column == ID else NULL_TEXT
        else:
            reason = EMPTY_TEXT
        masks[reason] = masks.get(reason, np.zeros(n, dtype=bool)) | mask
    reason = np.full(n, None, dtype=object)
    for code in reversed(REASONS):  # the highest priority is applied last and wins
        mask = masks.get(code)
        if mask is not None and mask.any():
            reason[mask] = code
    scorable = pa.array(np.equal(reason, None))
    out = {ID: ids, columns.text: pc.if_else(scorable, texts.fill_null(""), "")}
    if pairs is not None:
        out[columns.pair] = pc.if_else(scorable, pairs.fill_null(""), "")
    return pa.table({**out, SOURCE_FILE: _repeat(source_file, n), REJECT_REASON: pa.array(reason, type=pa.string()),
                     SCORABLE: scorable, GROUP: _repeat(group, n)})


def _repeat(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                          pa.array([value], pa.string())).dictionary_decode()


def error_row(display: str, columns: InputColumns | str, group: str, problem: str, rows: int | None = None,
              row_groups: Sequence[int] | None = None) -> pa.Table:
    """The in-band marker of a file that failed mid-read: one unscorable row the sink recognises.

    Its reason carries the file, the problem and the rows and row groups not read (``parse_file_error``).
    """
    columns = InputColumns.of(columns)
    texts = {name: [""] for name in (columns.text, columns.pair) if name is not None}
    detail = json.dumps(UnreadableFile(display, problem, rows, None if row_groups is None else tuple(row_groups))
                        .as_dict(), ensure_ascii=False)
    return pa.table({ID: pa.array([None], pa.string()), **texts, SOURCE_FILE: [display],
                     REJECT_REASON: [f"{FILE_ERROR}{detail}"], SCORABLE: [False], GROUP: [group]})


def parse_file_error(reason: str) -> UnreadableFile:
    """The file, problem and unread rows of an error row's reason (``FILE_ERROR`` stripped or not)."""
    payload = json.loads(reason[len(FILE_ERROR):] if reason.startswith(FILE_ERROR) else reason)
    groups = payload.get("row_groups")
    return UnreadableFile(payload["file"], payload["reason"], payload["rows"],
                          None if groups is None else tuple(groups))


class _RowGroupReader:
    """Row groups of one file, each read whole; a failed read reopens the file for the next try."""

    def __init__(self, filesystem: pafs.FileSystem, path: str):
        self.filesystem, self.path = filesystem, path
        self.handle = None
        self.parquet: pq.ParquetFile | None = None

    def file(self) -> pq.ParquetFile:
        if self.parquet is None:
            self.handle = self.filesystem.open_input_file(self.path)
            self.parquet = pq.ParquetFile(self.handle)
        return self.parquet

    def read(self, index: int, columns: list[str]) -> pa.Table:
        try:
            return self.file().read_row_group(index, columns=columns)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle, self.parquet = None, None


def read_tagged(filesystem: pafs.FileSystem, path: str, display: str, row_groups: Sequence[int],
                columns: InputColumns | str, batch_rows: int, group: str = "",
                retry: StorageRetry = DEFAULT_RETRY, row_group_rows: Sequence[int] | None = None) -> Iterator[pa.Table]:
    """Stream tagged batches of some row groups of one file; a corrupt file becomes an error row.

    Each row group is read whole before any of it is yielded, with transient storage errors
    retried, so a retry never yields a row twice; a storage error that persists raises.
    ``row_group_rows`` (from the footer) gives the unread rows an error row reports.
    """
    columns = InputColumns.of(columns)
    reader = _RowGroupReader(filesystem, path)
    remaining = list(row_groups)
    try:
        parquet = retrying(reader.file, f"open {display}", retry)
        _check_columns(display, parquet.schema_arrow, columns)
        while remaining:
            table = retrying(lambda: reader.read(remaining[0], columns.names),
                             f"read row group {remaining[0]} of {display}", retry)
            remaining.pop(0)
            for batch in table.to_batches(max_chunksize=batch_rows):
                yield tag_rows(batch, display, columns, group)
    except InputFileError as exc:
        yield error_row(display, columns, group, exc.problem, _unread(remaining, row_group_rows), remaining)
    except (OSError, pa.ArrowException) as exc:
        if is_storage_fault(exc):
            raise  # the store's fault, not the file's: the pipeline fails and names it
        yield error_row(display, columns, group, f"unreadable as Parquet ({type(exc).__name__}: {exc})",
                        _unread(remaining, row_group_rows), remaining)
    finally:
        reader.close()


def _unread(remaining: list[int], row_group_rows: Sequence[int] | None) -> int | None:
    return None if row_group_rows is None else sum(row_group_rows[i] for i in remaining)


@dataclass(frozen=True)
class ReadUnit:
    filesystem: pafs.FileSystem
    file: FileInfo
    row_groups: tuple[int, ...]
    group: str

    @property
    def rows(self) -> int:
        return sum(self.file.row_group_rows[i] for i in self.row_groups)

    @property
    def bytes(self) -> int:
        return sum(self.file.row_group_bytes[i] for i in self.row_groups)


@dataclass(frozen=True)
class ScoringGroup:
    """Files scored together and written to one output (a partition; the whole input for batch_infer)."""
    name: str
    files: ParquetFiles
    infos: tuple[FileInfo, ...]
    unreadable: tuple[UnreadableFile, ...] = ()  # files quarantined before any read (their footer failed)

    @property
    def rows(self) -> int:
        return sum(i.num_rows for i in self.infos)


def read_units(groups: Sequence[ScoringGroup], rows_per_task: int) -> list[ReadUnit]:
    """Pack each file's row groups into units of about ``rows_per_task`` rows (never across files)."""
    units = []
    for group in groups:
        for info in group.infos:
            current: list[int] = []
            rows = 0
            for index, n in enumerate(info.row_group_rows):
                if current and rows + n > rows_per_task:
                    units.append(ReadUnit(group.files.filesystem, info, tuple(current), group.name))
                    current, rows = [], 0
                current.append(index)
                rows += n
            if current:  # an empty file has no row groups and no rows: nothing to read
                units.append(ReadUnit(group.files.filesystem, info, tuple(current), group.name))
    return units


def _make_read_fn(unit: ReadUnit, columns: InputColumns, batch_rows: int, retry: StorageRetry):
    def read_fn():
        return read_tagged(unit.filesystem, unit.file.path, unit.file.display, unit.row_groups, columns,
                           batch_rows, unit.group, retry, unit.file.row_group_rows)
    return read_fn


try:  # keep this module importable (and its pure functions testable) without Ray
    from ray.data import Datasource as _Datasource
except ImportError:  # pragma: no cover
    _Datasource = object


class ScoringSource(_Datasource):
    """Ray Data source: one read task per ``ReadUnit``; each streams tagged blocks of ``batch_rows``.

    Use with ``ray.data.read_datasource(ScoringSource(...), override_num_blocks=n)``: when the
    input has fewer units than ``n`` (small partitions), Ray splits the blocks so downstream
    actors all get work.
    """

    def __init__(self, groups: Sequence[ScoringGroup], columns: InputColumns | str,
                 settings: ReadSettings = ReadSettings(), retry: StorageRetry = DEFAULT_RETRY):
        super().__init__()
        self.units = read_units(groups, settings.rows_per_task)
        self.columns = InputColumns.of(columns)
        self.batch_rows = settings.batch_rows
        self.retry = retry

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(u.bytes for u in self.units)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        tasks = []
        for unit in self.units:
            metadata = BlockMetadata(num_rows=unit.rows, size_bytes=unit.bytes, exec_stats=None,
                                     input_files=(unit.file.display,))
            tasks.append(ReadTask(_make_read_fn(unit, self.columns, self.batch_rows, self.retry),
                                  metadata, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "ReadTaggedParquet"


def find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in a chain (Ray wraps worker errors in its own types)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_failure(exc: BaseException) -> str:
    """A one-line message for a failed scoring pipeline: the bad file when one is to blame."""
    found = find_cause(exc, InputFileError)
    if found is not None:
        return str(found)
    text = str(exc)
    marker = "InputFileError: "
    if marker in text:  # Ray re-raised it as a string-carrying wrapper
        return text[text.rindex(marker) + len(marker):].strip().splitlines()[0]
    # Ray's message is a remote traceback plus advice; the root cause is its last "...Error: ..." line
    causes = [line.strip() for line in text.splitlines()
              if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b.*: ", line.strip())]
    return f"{type(exc).__name__}: {causes[-1] if causes else text.strip()[:500]}"
