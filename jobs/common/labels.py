"""Label names must agree wherever a class index crosses a boundary: between files, splits and a model.

A label is stored as an index; its name lives in each Parquet file's metadata (``prepare_corpus`` writes
it) and in a model's ``config.json`` (``id2label``). Index k must mean the same class in every split a
model trains on, and the model that scores a labelled file must number its classes as the file does,
or metrics, the checkpoint choice and scored labels silently mean other classes. The checks read
footers only and run on the driver, before Ray starts.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline.errors import InputDataError
from data_pipeline.paths import ParquetFiles
from data_pipeline.schema import label_names_from_schema


class LabelMismatchError(InputDataError):
    """Files, splits or a model that name their classes differently (or do not say how)."""


def file_label_names(files: ParquetFiles) -> dict[str, list[str] | None]:
    """Each file's label names from its Parquet metadata (None where it has none), by URI, in path order."""
    def read(path: str, uri: str) -> list[str] | None:
        try:
            with files.filesystem.open_input_file(path) as handle:
                return label_names_from_schema(pq.read_schema(handle))
        except pa.ArrowInvalid as exc:  # not Parquet: the data's fault (a storage error is not: it propagates)
            raise InputDataError(f"{uri}: unreadable as Parquet ({exc})") from None

    workers = 1 if isinstance(files.filesystem, pafs.LocalFileSystem) else 16  # a footer is a round trip there
    with ThreadPoolExecutor(max_workers=workers) as pool:
        names = list(pool.map(read, files.paths, files.uris()))
    return dict(zip(files.uris(), names))


def agreed_label_names(splits: dict[str, ParquetFiles]) -> list[str]:
    """The label names every file of every split carries, in the same order; the first train file sets them."""
    named = {split: file_label_names(files) for split, files in splits.items()}
    first_split = next(iter(named))
    reference, names = next(iter(named[first_split].items()))
    if names is None:
        raise LabelMismatchError(f"{reference}: no label_names in the Parquet metadata "
                                 "(write corpora with `python -m jobs.prepare_corpus`)")
    for split, by_file in named.items():
        for uri, other in by_file.items():
            if other is None:
                raise LabelMismatchError(f"{uri} ({split} split): no label_names in the Parquet metadata, so its "
                                         f"labels cannot be checked against {reference}'s {names} (write every "
                                         "split with one `python -m jobs.prepare_corpus` run)")
            if other != names:
                raise LabelMismatchError(f"label names disagree: {uri} ({split} split) has {other}, {reference} "
                                         f"({first_split} split) has {names}; every file of every split must name "
                                         "the same classes in the same order (label k is one class everywhere): "
                                         "write the splits with one `python -m jobs.prepare_corpus` run")
    return names


def model_label_names(model_dir: str | Path) -> list[str]:
    """A Hugging Face classifier's class names by index (``id2label`` of its config.json)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    return [id2label[key] for key in sorted(id2label, key=int)]


def check_model_labels(model_names: list[str], model_ref: str, files: ParquetFiles) -> None:
    """Refuse to score files whose metadata names the classes otherwise than the model does (same order).

    Files without label names (unlabelled input, a user's Parquet) are not checked: nothing to compare.
    """
    named = {uri: names for uri, names in file_label_names(files).items() if names is not None}
    if not named:
        return
    (first, names), *others = named.items()
    for uri, other in others:
        if other != names:
            raise LabelMismatchError(f"the input's files name their classes differently: {uri} has {other}, "
                                     f"{first} has {names}")
    if names != model_names:
        raise LabelMismatchError(f"the model {model_ref} names its classes {model_names} (id2label in its "
                                 f"config.json), the input {first} names them {names}: its scored label k "
                                 "would not be the input's label k; score it with a model trained on these "
                                 "labels (jobs.evaluate matches labels by name)")
