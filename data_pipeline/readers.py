"""Read a user's labelled file (CSV / TSV, JSON Lines or Parquet) as it comes, or refuse it clearly.

Exported files are rarely what a default reader expects: RFC 4180 CSV puts newlines inside
quoted cells, Chinese exports are often GB18030 / GBK / Big5, Excel writes a UTF-8 BOM,
ids such as "007" must not become 7, a label column may hold floats or booleans, and hand-typed
labels differ by a trailing space or a capital (``positive``, ``Positive ``). Every refusal is an
``InputFormatError`` that names the file and, where it applies, the column, the line and the
number of offending rows.
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from data_pipeline.errors import InputDataError

_FORMAT_OF_SUFFIX = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                     ".parquet": "parquet"}
_UTF8_CODECS = ("utf-8", "utf-8-sig")  # read by pyarrow directly, a leading BOM skipped
_BOM = codecs.BOM_UTF8
_CHECK_CHUNK_BYTES = 1 << 20  # the encoding check streams the file: never holds it whole
_EXAMPLES = 5


@dataclass(frozen=True, kw_only=True)
class FileFormat:
    """How a CSV, JSONL or Parquet file is read: its format, text encoding and delimiter."""
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"  # auto: from the suffix
    encoding: str = "utf-8"  # CSV / JSONL text encoding, e.g. gb18030, gbk, big5
    delimiter: str = ","  # CSV only; a .tsv file read with format auto uses a tab

    def __post_init__(self) -> None:
        if self.format not in ("auto", "csv", "jsonl", "parquet"):
            raise ValueError(f"format must be auto, csv, jsonl or parquet, got {self.format!r}")
        try:
            codec = codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {self.encoding!r} (e.g. utf-8, gb18030, gbk, big5)") from None
        if not getattr(codec, "_is_text_encoding", True):  # base64, zlib...: bytes-to-bytes codecs
            raise ValueError(f"{self.encoding!r} is not a text encoding")
        if len(self.delimiter) != 1 or self.delimiter in '\r\n"':
            raise ValueError(f"delimiter must be one character other than a quote or newline, "
                             f"got {self.delimiter!r}")


@dataclass(frozen=True, kw_only=True)
class TextFields:
    """Which columns hold the text: one, several joined into one, or a sentence pair."""
    text_columns: tuple[str, ...] = ("text",)  # several columns (title, body) are joined into one text
    separator: str = "\n"  # what joins them
    pair_column: str | None = None  # a second text kept apart: BERT sentence pairs [CLS] a [SEP] b [SEP]

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, str):  # a bare string would be read as one column per character
            raise ValueError(f"text_columns is a tuple of column names, got the string {self.text_columns!r}")
        if not self.text_columns:
            raise ValueError("text_columns must name at least one column")
        if self.pair_column is not None and self.pair_column in self.text_columns:
            raise ValueError(f"pair_column '{self.pair_column}' is also one of text_columns")


LabelCase = Literal["error", "lower", "keep"]


@dataclass(frozen=True, kw_only=True)
class LabelRules:
    """How string labels become class names: never a silent extra class for a stray space or capital."""
    strip: bool = True  # surrounding whitespace is removed ("positive " is "positive"); the rows are counted
    # Labels equal up to case ("positive", "Positive"): error names them; lower folds every label (and the
    # given label names) to lower case, so they are one class; keep leaves them distinct classes.
    case: LabelCase = "error"

    def __post_init__(self) -> None:
        if self.case not in ("error", "lower", "keep"):
            raise ValueError(f"label case must be error, lower or keep, got {self.case!r}")


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]
    ids: list[str] | None = None  # user-supplied ids, else derived from the content
    text_pairs: list[str] | None = None  # the second text of sentence pairs, None for single texts
    labels_stripped: int = 0  # rows whose label lost surrounding whitespace (LabelRules.strip)
    labels_lowered: int = 0  # rows whose label was folded to lower case (LabelRules.case = lower)


class InputFormatError(InputDataError):
    """A user's file that cannot be read as asked; the message always starts with the file."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


# ---- tables -----------------------------------------------------------------------------------

def read_table(path: str, fmt: FileFormat, string_columns: Sequence[str] = ()) -> pa.Table:
    """The file as an Arrow table; ``string_columns`` (ids, texts) must exist and come back as strings."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    kind, delimiter = _resolve_format(path, fmt)
    if kind == "parquet":
        table = _read_parquet(path)
    else:
        _check_encoding(path, fmt.encoding)
        with closing(_utf8_stream(path, fmt.encoding)) as stream:
            if kind == "csv":
                table = _read_csv(path, stream, delimiter, string_columns)
            else:
                table = _read_jsonl(path, stream, fmt.encoding)
    table = _decode_dictionaries(table)
    _require_columns(path, table, string_columns)
    return _as_strings(path, table, string_columns)


def _require_columns(path: str, table: pa.Table, columns: Sequence[str]) -> None:
    for column in columns:
        if column not in table.column_names:
            raise InputFormatError(path, f"column '{column}' not found (file has: {', '.join(table.column_names)})")


def file_format(path: str, fmt: FileFormat) -> str:
    """``csv``, ``jsonl`` or ``parquet``: the configured format, or the one the file's suffix names."""
    return _resolve_format(path, fmt)[0]


def _resolve_format(path: str, fmt: FileFormat) -> tuple[str, str]:
    """(format, delimiter): the configured ones, or guessed from the suffix."""
    if fmt.format != "auto":
        return fmt.format, fmt.delimiter
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMAT_OF_SUFFIX:
        raise InputFormatError(path, f"unsupported format {suffix!r}: name it .csv, .tsv, .jsonl, .json, "
                                     f".ndjson or .parquet, or set the format (csv, jsonl, parquet)")
    return _FORMAT_OF_SUFFIX[suffix], "\t" if suffix == ".tsv" else fmt.delimiter


def _check_encoding(path: str, encoding: str) -> None:
    """Decode the whole file strictly, a chunk at a time; the first bad byte is reported with its line."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    newlines = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHECK_CHUNK_BYTES):
            state = decoder.getstate()
            try:
                newlines += decoder.decode(chunk).count("\n")
            except UnicodeDecodeError:
                decoder.setstate(state)
                _raise_bad_line(path, encoding, decoder, chunk, newlines)
        try:
            decoder.decode(b"", final=True)  # a multi-byte character cut off by the end of the file
        except UnicodeDecodeError:
            raise _not_text(path, encoding, newlines + 1) from None


def _raise_bad_line(path: str, encoding: str, decoder: codecs.IncrementalDecoder, chunk: bytes,
                    newlines: int) -> NoReturn:
    """Re-decode a chunk known to be bad line by line, to say which line it is."""
    for piece in io.BytesIO(chunk):
        try:
            newlines += decoder.decode(piece).count("\n")
        except UnicodeDecodeError:
            raise _not_text(path, encoding, newlines + 1) from None
    raise _not_text(path, encoding, newlines + 1)  # not reached: the whole chunk failed to decode


def _not_text(path: str, encoding: str, line: int) -> InputFormatError:
    return InputFormatError(path, f"not valid {encoding} text at line {line} "
                                  f"(set input.format.encoding to the file's encoding)")


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in _UTF8_CODECS


def _utf8_stream(path: str, encoding: str) -> pa.NativeFile:
    """The file as UTF-8 bytes without a BOM: pyarrow reads UTF-8 only, and a BOM would join the first name."""
    stream = pa.OSFile(path)
    if not _is_utf8(encoding):
        return pa.transcoding_input_stream(stream, encoding, "utf-8")
    if stream.read(len(_BOM)) != _BOM:
        stream.seek(0)
    return stream


def _read_csv(path: str, stream: pa.NativeFile, delimiter: str, string_columns: Sequence[str]) -> pa.Table:
    # newlines_in_values: RFC 4180 quoted cells may hold newlines (the default parser loses sync on them).
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    # Ids and texts stay text: "007" is not 7, and a text "NA" is not null.
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in string_columns})
    try:
        return pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as error:
        raise InputFormatError(path, f"not valid CSV with delimiter {delimiter!r} ({error})") from None


def _read_jsonl(path: str, stream: pa.NativeFile, encoding: str) -> pa.Table:
    try:
        return pajson.read_json(stream)
    except pa.ArrowInvalid as error:
        line = _first_bad_json_line(path, encoding)
        where = f"line {line} is not a JSON object" if line else "could not be read as JSON Lines"
        raise InputFormatError(path, f"{where}; expected one JSON object per line ({error})") from None


def _first_bad_json_line(path: str, encoding: str) -> int | None:
    """Only on the error path: pyarrow's messages count rows within a block, not lines of the file."""
    encoding = "utf-8-sig" if _is_utf8(encoding) else encoding
    with open(path, encoding=encoding, newline="\n") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except json.JSONDecodeError:
                return number
    return None  # every line is an object: the error is elsewhere (e.g. a field changing type)


def _read_parquet(path: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except pa.ArrowInvalid as error:
        raise InputFormatError(path, f"not a readable Parquet file ({error})") from None


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    """Categorical columns (pandas exports) as their plain values."""
    for index, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            column = table.column(index)
            table = table.set_column(index, field.name, column.cast(field.type.value_type))
    return table


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _as_strings(path: str, table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Id and text columns as strings: integers are cast (JSON/Parquet ids), bytes are refused."""
    for name in dict.fromkeys(columns):
        index = table.schema.get_field_index(name)
        kind = table.schema.field(index).type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
            raise InputFormatError(path, f"column '{name}' holds bytes ({kind}), not text; "
                                         f"write it as a string column")
        if not (_is_text(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)):
            raise InputFormatError(path, f"column '{name}' holds {kind} values, expected text")
        if kind != pa.string():
            table = table.set_column(index, name, table.column(index).cast(pa.string()))
    return table


# ---- labelled texts ---------------------------------------------------------------------------

def read_labelled(path: str, fmt: FileFormat, fields: TextFields, label_column: str, id_column: str | None,
                  label_names: tuple[str, ...] | None, max_labels: int = 1000,
                  rules: LabelRules = LabelRules()) -> LabelledTexts:
    """Texts (the text columns joined), optional pairs, class-index labels and optional ids of one file."""
    if label_names is not None and len(set(label_names)) != len(label_names):
        raise ValueError(f"label_names has duplicates: {list(label_names)}")
    string_columns = [*fields.text_columns, *filter(None, (fields.pair_column, id_column))]
    table = read_table(path, fmt, string_columns)
    _require_columns(path, table, [label_column])
    if table.num_rows == 0:
        raise InputFormatError(path, "no data rows")
    labels, names, stripped, lowered = _labels(path, table.column(label_column), label_column, label_names,
                                               max_labels, rules)
    pairs = None if fields.pair_column is None else _filled(table.column(fields.pair_column)).to_pylist()
    ids = None if id_column is None else _ids(path, table.column(id_column), id_column)
    return LabelledTexts(texts=_joined_texts(table, fields), labels=labels, label_names=names, ids=ids,
                         text_pairs=pairs, labels_stripped=stripped, labels_lowered=lowered)


def _filled(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(column, "")


def _joined_texts(table: pa.Table, fields: TextFields) -> list[str]:
    """The text columns joined by the separator; null or empty cells are skipped (a title without a body)."""
    if len(fields.text_columns) == 1:
        return _filled(table.column(fields.text_columns[0])).to_pylist()
    columns = [_empty_as_null(table.column(name)) for name in fields.text_columns]
    return _filled(pc.binary_join_element_wise(*columns, fields.separator, null_handling="skip")).to_pylist()


def _empty_as_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _ids(path: str, column: pa.ChunkedArray, name: str) -> list[str]:
    missing = column.null_count + (pc.sum(pc.equal(column, "")).as_py() or 0)
    if missing:
        raise InputFormatError(path, f"column '{name}': {missing} row(s) have no id")
    return column.to_pylist()


def _labels(path: str, column: pa.ChunkedArray, name: str, label_names: tuple[str, ...] | None,
            max_labels: int, rules: LabelRules) -> tuple[list[int], tuple[str, ...], int, int]:
    """Class indices and names, and the rows whose label was stripped and lowered on the way."""
    _check_label_type(path, column, name)
    stripped = lowered = 0
    if _is_text(column.type):
        column = column.cast(pa.string())
        if rules.strip:
            column, stripped = _changed(column, pc.utf8_trim_whitespace)
        column = _empty_as_null(column)  # an empty (or all-space) cell is a missing label, not a class named ""
    if column.null_count:
        raise InputFormatError(path, f"column '{name}': {column.null_count} row(s) have no label")
    # Counted in Arrow before any Python list: an id column given as the label has a million values.
    distinct = pc.count_distinct(column).as_py()
    if distinct > max_labels:
        raise InputFormatError(path, f"column '{name}' has {distinct} distinct labels, more than "
                                     f"max_labels={max_labels} (is it really the label column?)")
    if pa.types.is_integer(column.type):
        return (*_integer_labels(path, column, name, label_names, max_labels), 0, 0)
    if rules.case == "lower":
        column, lowered = _changed(column, pc.utf8_lower)
        label_names = _lowered_names(label_names)
    elif rules.case == "error":
        _refuse_case_variants(path, column, name)
    return (*_string_labels(path, column, name, label_names), stripped, lowered)


def _changed(column: pa.ChunkedArray, transform) -> tuple[pa.ChunkedArray, int]:
    """``transform(column)`` and how many rows it changed."""
    out = transform(column)
    return out, pc.sum(pc.not_equal(out, column).fill_null(False)).as_py() or 0


def _lowered_names(label_names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if label_names is None:
        return None
    lowered = tuple(n.lower() for n in label_names)
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"label_names {list(label_names)} are equal up to case: with label_case lower they are "
                         "one class; name each class once")
    return lowered


def _refuse_case_variants(path: str, column: pa.ChunkedArray, name: str) -> None:
    """Labels that differ only by case would be separate classes: name them, with their rows."""
    counts = pc.value_counts(column).to_pylist()
    spellings: dict[str, list[tuple[str, int]]] = {}
    for entry in counts:
        spellings.setdefault(entry["values"].lower(), []).append((entry["values"], entry["counts"]))
    clashes = [sorted(group) for group in spellings.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" and ".join(f"'{label}' ({n} row(s))" for label, n in group)
                          for group in sorted(clashes)[:_EXAMPLES])
        raise InputFormatError(path, f"column '{name}' has labels equal up to case: {shown}; they would be "
                                     "separate classes: fix the file, or set label_case: lower to merge them "
                                     "(keep: to keep them apart)")


def _check_label_type(path: str, column: pa.ChunkedArray, name: str) -> None:
    """Labels are names or class indices; 1.0 or True are not guessed at (a float column often hides NaN)."""
    kind = column.type
    if _is_text(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind):
        return
    rows = len(column) - column.null_count
    nan = (pc.sum(pc.is_nan(column)).as_py() or 0) if pa.types.is_floating(kind) else 0
    nan_note = f", {nan} of them NaN" if nan else ""
    raise InputFormatError(path, f"column '{name}' holds {kind} values ({rows} row(s){nan_note}); labels must "
                                 f"be strings or integers (write 1, not 1.0 or true)")


def _integer_labels(path: str, column: pa.ChunkedArray, name: str, label_names: tuple[str, ...] | None,
                    max_labels: int) -> tuple[list[int], tuple[str, ...]]:
    """Integers are class indices: names "0".."max" unless given."""
    highest = pc.max(column).as_py()
    if label_names is None and highest + 1 > max_labels:
        raise InputFormatError(path, f"column '{name}' has labels up to {highest}: {highest + 1} classes, "
                                     f"more than max_labels={max_labels}")
    count = len(label_names) if label_names is not None else max(highest, 0) + 1
    outside = pc.sum(pc.or_(pc.less(column, 0), pc.greater_equal(column, count))).as_py()
    if outside:
        raise InputFormatError(path, f"column '{name}': {outside} row(s) have labels outside 0..{count - 1}")
    names = label_names if label_names is not None else tuple(str(i) for i in range(count))
    return column.cast(pa.int64()).to_pylist(), names


def _string_labels(path: str, column: pa.ChunkedArray, name: str,
                   label_names: tuple[str, ...] | None) -> tuple[list[int], tuple[str, ...]]:
    """Names map to their index: in the given order, else sorted."""
    names = label_names if label_names is not None else tuple(sorted(pc.unique(column).to_pylist()))
    index = pc.index_in(column, value_set=pa.array(names, pa.string()))
    if index.null_count:
        unknown = sorted(pc.unique(pc.filter(column, pc.is_null(index))).to_pylist())
        by_case = {n.lower(): n for n in names}
        near = [f"'{u}' differs from '{by_case[u.lower()]}' only by case" for u in unknown[:_EXAMPLES]
                if u.lower() in by_case]
        hint = f" ({'; '.join(near)}: set label_case: lower to merge them)" if near else ""
        raise InputFormatError(path, f"column '{name}': {index.null_count} row(s) have labels outside "
                                     f"{list(names)}: {unknown[:_EXAMPLES]}{hint}")
    return index.to_pylist(), tuple(names)
