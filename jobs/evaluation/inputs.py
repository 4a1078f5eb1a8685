"""A labelled evaluation file, read as it comes and mapped onto a model's labels.

Any form ``data_pipeline.readers`` reads (CSV in any encoding, JSON Lines, Parquet). A corpus
that ``prepare_corpus`` wrote (Parquet with ``label_names`` in its metadata) needs no settings:
its ``id``, ``text``, ``text_pair`` and ``label`` columns and label names are taken as they are.
The rows are staged as Parquet (``id``, ``text`` [, ``text_pair``]) for the scoring pipeline;
labels and references stay on the driver and are joined back by id.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.paths import filesystem_for, join_path
from data_pipeline.quarantine import InputColumns
from data_pipeline.readers import FileFormat, InputFormatError, TextFields, file_format, read_labelled, read_table
from data_pipeline.schema import label_names_from_schema
from jobs.common.inputs import LabelledInput

ID, TEXT, PAIR = "id", "text", "text_pair"


@dataclass(frozen=True, kw_only=True)
class EvaluationInput(LabelledInput):
    """The labelled file to measure on and how to read it (the reading settings are ignored for a corpus
    written by prepare_corpus)."""
    path: str = "data/corpus/test.parquet"  # the labelled file to measure the model on
    id_column: str | None = None  # None: rows are numbered (row-1, row-2, ...)
    # The model's training file, read the same way: baselines fitted on it, measured on the same rows
    train_path: str | None = None
    source_column: str = "source"  # seq2seq: the input text
    target_column: str = "target"  # seq2seq: the reference output (space-separated tokens)


@dataclass(frozen=True)
class EvalRows:
    """One labelled file on the driver: ids, texts (and pairs) and the truth for each id."""
    path: str
    ids: list[str]
    texts: list[str]
    text_pairs: list[str] | None
    labels: list[int] | None = None  # classifiers: indices into the model's label names
    targets: list[str] | None = None  # seq2seq references

    @property
    def columns(self) -> InputColumns:
        return InputColumns(text=TEXT, id=ID, pair=PAIR if self.text_pairs is not None else None)

    def stage(self, directory: str) -> str:
        """The rows as the Parquet file the scoring pipeline reads (a local path or URI every node sees)."""
        columns = {ID: self.ids, TEXT: self.texts}
        if self.text_pairs is not None:
            columns[PAIR] = self.text_pairs
        fs, base = filesystem_for(directory)
        fs.create_dir(base, recursive=True)
        table = pa.table(columns, schema=pa.schema([(name, pa.string()) for name in columns]))
        pq.write_table(table, join_path(base, "rows.parquet"), filesystem=fs)
        return join_path(directory, "rows.parquet")


def _row_ids(path: str, ids: list[str] | None, n: int) -> list[str]:
    if ids is None:
        return [f"row-{i + 1}" for i in range(n)]
    seen, duplicates = set(), 0
    for row_id in ids:
        duplicates += row_id in seen
        seen.add(row_id)
    if duplicates:  # the truth is joined back to the scores by id
        raise InputFormatError(path, f"{duplicates} row(s) repeat an id already seen: ids must be unique")
    return ids


def _prepared_corpus_names(path: str, fmt: FileFormat) -> list[str] | None:
    if file_format(path, fmt) != "parquet":
        return None
    return label_names_from_schema(pq.read_schema(path))


def read_classification_rows(path: str, settings: EvaluationInput, model_labels: list[str]) -> EvalRows:
    corpus_names = _prepared_corpus_names(path, settings.format)
    if corpus_names is not None:  # prepare_corpus's layout: integer labels named in the metadata
        pair = PAIR if PAIR in pq.read_schema(path).names else None
        data = read_labelled(path, settings.format, TextFields(text_columns=(TEXT,), pair_column=pair), "label",
                             ID, tuple(corpus_names))
    else:
        data = read_labelled(path, settings.format, settings.fields, settings.label_column, settings.id_column,
                             None, settings.max_labels, settings.label_rules)
    # Labels are matched by name, so another order is fine; a class the model does not have is not.
    unknown = sorted(set(data.label_names) - set(model_labels))
    if unknown:
        source = "in its metadata" if corpus_names is not None else "in its label column"
        raise InputFormatError(path, f"the data names the classes {list(data.label_names)} ({source}), the "
                                     f"model {model_labels} (id2label in its config.json): {unknown[:5]} are not "
                                     "among the model's labels")
    index = {name: i for i, name in enumerate(model_labels)}
    labels = [index[data.label_names[label]] for label in data.labels]
    return EvalRows(path=path, ids=_row_ids(path, data.ids, len(labels)), texts=data.texts,
                    text_pairs=data.text_pairs, labels=labels)


def read_seq2seq_rows(path: str, settings: EvaluationInput) -> EvalRows:
    id_column = settings.id_column or (ID if _prepared_corpus_layout(path, settings.format) else None)
    columns = [settings.source_column, settings.target_column, *([id_column] if id_column else [])]
    table = read_table(path, settings.format, columns)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputFormatError(path, f"lacks column(s) {', '.join(missing)} "
                                     f"(file has: {', '.join(table.column_names)})")
    targets = table.column(settings.target_column).to_pylist()
    empty = sum(not (t or "").strip() for t in targets)
    if empty:
        raise InputFormatError(path, f"column '{settings.target_column}': {empty} row(s) have no reference")
    ids = None if id_column is None else [str(v) for v in table.column(id_column).to_pylist()]
    texts = ["" if s is None else s for s in table.column(settings.source_column).to_pylist()]
    return EvalRows(path=path, ids=_row_ids(path, ids, table.num_rows), texts=texts, text_pairs=None,
                    targets=targets)


def _prepared_corpus_layout(path: str, fmt: FileFormat) -> bool:
    return file_format(path, fmt) == "parquet" and ID in pq.read_schema(path).names
