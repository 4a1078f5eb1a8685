"""The Parquet schemas the jobs read and write.

A labelled classification corpus is ``id`` (string), ``text`` (string), ``label`` (int);
its label names travel in the Parquet schema metadata (key ``label_names``) and in a
``labels.json`` side file. A seq2seq corpus is ``id``, ``source``, ``target`` (strings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

LABEL_NAMES_KEY = b"label_names"


@dataclass(frozen=True, kw_only=True)
class ColumnSpec:
    name: str
    kind: Literal["string", "int"]
    nonempty: bool = False  # strings: null or whitespace-only values are bad rows


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    columns: tuple[ColumnSpec, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
        types = {"string": pa.string(), "int": pa.int64()}
        return pa.schema([pa.field(c.name, types[c.kind], nullable=False) for c in self.columns],
                         metadata=metadata)


def classification_spec(text_column: str = "text", with_label: bool = True,
                        pair_column: str | None = None) -> TableSpec:
    """id, text, then the optional second text of sentence pairs (may be empty), then label."""
    columns = [ColumnSpec(name="id", kind="string"), ColumnSpec(name=text_column, kind="string", nonempty=True)]
    if pair_column is not None:
        columns.append(ColumnSpec(name=pair_column, kind="string"))
    if with_label:
        columns.append(ColumnSpec(name="label", kind="int"))
    return TableSpec(columns=tuple(columns))


SEQ2SEQ_SPEC = TableSpec(columns=(
    ColumnSpec(name="id", kind="string"),
    ColumnSpec(name="source", kind="string", nonempty=True),
    ColumnSpec(name="target", kind="string", nonempty=True),
))


def label_names_metadata(label_names: list[str]) -> dict[bytes, bytes]:
    return {LABEL_NAMES_KEY: json.dumps(label_names, ensure_ascii=False).encode()}


def label_names_from_schema(schema: pa.Schema) -> list[str] | None:
    raw = (schema.metadata or {}).get(LABEL_NAMES_KEY)
    return json.loads(raw) if raw else None


_UNSAFE_KEY_CHARS = re.compile(r"[^\w\-. /]")


def metric_key(label_name: str) -> str:
    """A label name as part of an MLflow metric key (letters of any script, digits, _ - . / and space)."""
    return _UNSAFE_KEY_CHARS.sub("_", str(label_name)) or "_"
