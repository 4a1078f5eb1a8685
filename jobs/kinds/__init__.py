"""One place per model kind: what scoring, evaluation and registration know about each kind of model.

A kind is one frozen ``KindSpec`` in its own module (``classifier.py``, ``seq2seq.py``), registered in
``KINDS``; nothing outside this package branches on a model's kind. ``jobs.common.registry.model_kind``
tells a model directory's kind from the files it holds (docs/extending.md, "A new model kind").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


def _nothing(*_args) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class KindSpec:
    name: str  # as jobs.common.registry.model_kind names it
    # Scoring (jobs.scoring.pipeline): the columns of a scored row (beside id and lineage), the Ray Data actor
    # that tokenizes its own rows and scores them, and, where the kind has one, a separate tokenize stage
    # (a function of the batch) with the actor it feeds (used unless predictor.tokenize_in_actor).
    scored_schema: pa.Schema
    predictor: type
    tokenize_stage: Callable | None = None
    staged_predictor: type | None = None
    reads_pairs: bool = False  # encodes a sentence pair (input.fields.pair_column)
    # (settings, columns, model_dir) -> why the pipeline must not start, or None; a ConfigError may be raised
    check_scoring: Callable[[Any, Any, str], str | None] = _nothing
    # (model_dir, model_ref, readable input files): batch_infer's check of a labelled input against the model
    check_input: Callable[[str, str, Any], None] = _nothing
    # Registration of a bare checkpoint (jobs.register_checkpoint): () -> (PythonModel, signature, input example)
    pyfunc: Callable[[], tuple]
    # Evaluation (jobs.evaluation.runner): the model's label names (None: no labels), the labelled rows of a
    # file, and (rows, scored table, training rows or None, names) -> (result, baseline metrics)
    label_names: Callable[[str], list[str] | None] = _nothing
    read_rows: Callable[[str, Any, list[str] | None], Any]
    measure: Callable[[Any, pa.Table, Any, list[str] | None], tuple[Any, dict[str, float]]]
    headline_metric: str  # tagged on the model version with each evaluation
    summary_columns: tuple[str, ...]  # the evaluation description's table
    baseline_titles: dict[str, str]  # baseline name -> its row title in that table
    log_artifacts: Callable[[Any, list[str] | None], None] = _nothing  # (result, names): to the active MLflow run
    report_lines: Callable[[dict[str, float], Any], list[str]]  # (metrics, result): evaluate's printed table


def _registered() -> dict[str, KindSpec]:
    from jobs.kinds import classifier, seq2seq

    return {spec.name: spec for spec in (classifier.SPEC, seq2seq.SPEC)}


KINDS: dict[str, KindSpec] = _registered()


def kind_spec(kind: str) -> KindSpec:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}: one of {', '.join(sorted(KINDS))}") from None
