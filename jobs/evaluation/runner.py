"""Evaluation's run: score a labelled file through the batch pipeline, compare with the truth (``jobs.evaluate``).

The file may be any form ``prepare_corpus`` reads (CSV in any encoding, JSON Lines, Parquet;
several text columns or a sentence pair: ``input.*``). Its rows go through the same Ray Data
pipeline as ``batch_infer`` (rejected rows are counted and listed, never silently dropped),
then are joined back to their labels by id. Classifiers: accuracy, macro-F1, per-class
precision/recall/F1, the confusion matrix (table and picture), calibration (expected calibration
error, reliability plot) and, given ``input.train_path``, the majority and char n-gram baselines on the
same rows. Seq2seq models: token and syllable accuracy, polyphonic accuracy, exact match and,
given ``input.train_path``, the per-character baseline. Everything goes to one MLflow run, linked to
the model version (tags on both sides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from data_pipeline.corpus_manifest import check_corpus_file
from data_pipeline.paths import filesystem_for, resolve_parquet_files, to_uri
from data_pipeline.quarantine import inspect_files
from jobs.common import config as config_lib
from jobs.common.naming import unique_run_name
from jobs.common.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.datasets import file_sha256, input_summary, log_datasets
from jobs.common.shared_storage import local_model_dir, require_shared
from jobs.common.tracking import (TrackingConfig, TrackingTarget, client_for, environment_tags, metrics_table,
                                  prepare_tracking, set_description)
from jobs.evaluation.inputs import EvalRows, EvaluationInput
from jobs.evaluation.results import ClassifierResult, Seq2SeqResult, rows_also_in_training
from jobs.kinds import kind_spec
from jobs.scoring.pipeline import (PipelineCounts, ScoringError, ScoringModel, manifest_for, output_location,
                                   score_files)
from jobs.scoring.publish import Publication
from jobs.scoring.settings import PipelineSettings
from jobs.scoring.sink import REJECTED_DIR, committed_files

SCORES = "scores"  # <output_dir>/<run name>/scores/: the scored and rejected rows, with their manifest


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(PipelineSettings):
    EXAMPLE_OVERRIDE: ClassVar[str] = "input.label_column=sentiment"  # --help's --set example (a unit test loads it)
    # Keys that moved to the input section every data-reading job shares (jobs.common.inputs): refused by name
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"data": "input.path", "train_data": "input.train_path"}
    model: str = "models:/review-sentiment@candidate"  # models:/name@alias, models:/name/version, run id, dir
    input: EvaluationInput = field(default_factory=EvaluationInput)  # the labelled file, how to read it
    output_dir: str = "runs/evaluations"  # each run writes <output_dir>/<run name>/ (staged rows, scores)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="evaluate"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None  # the MLflow run's name and output folder; None: a new unique name


@dataclass(frozen=True)
class EvaluationOutcome:
    run_id: str
    model: ScoringModel
    counts: PipelineCounts
    metrics: dict[str, float]
    result: ClassifierResult | Seq2SeqResult
    label_names: list[str] | None
    rejected: list[dict]
    output_path: str


def file_digest(path: str) -> str:
    return file_sha256(path)[:16]


def read_rows(config: EvaluateConfig, model: ScoringModel) -> tuple[EvalRows, EvalRows | None, list[str] | None]:
    """The evaluation rows, the training rows (for baselines) and the model's label names."""
    settings = config.input
    for path in filter(None, (settings.path, settings.train_path)):  # a prepare_corpus folder: as it was published
        check_corpus_file(*filesystem_for(path), path)
    spec = kind_spec(model.kind)
    names = spec.label_names(model.local_dir)
    rows = spec.read_rows(settings.path, settings, names)
    train = spec.read_rows(settings.train_path, settings, names) if settings.train_path else None
    return rows, train, names


def score_rows(rows: EvalRows, model: ScoringModel, config: EvaluateConfig, output: str) -> PipelineCounts:
    """Score the rows into ``<output>/scores``, published as the batch outputs are (``jobs.scoring.publish``)."""
    staged = resolve_parquet_files(rows.stage(f"{output}/_input"))
    infos = inspect_files(staged, rows.columns, config.storage)
    init_ray(config.ray)
    check_cpu_budget(config.cpu_demands(model.kind))
    fs, target = filesystem_for(f"{output}/{SCORES}")
    publication = Publication.on(fs, target, staging=filesystem_for(f"{output}/_staging/{SCORES}")[1],
                                 retry=config.storage)
    counts = score_files(staged, infos, to_uri(publication.write_path, output), model, config, rows.columns)
    publication.publish(manifest_for(counts, infos, model, config.predictor), existing="refuse")
    return counts


def _read_committed(output: str, kind: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = committed_files(f"{output}/{SCORES}", kind)
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def measure(rows: EvalRows, train: EvalRows | None, names: list[str] | None, model: ScoringModel,
            output: str) -> tuple[ClassifierResult | Seq2SeqResult, dict[str, float]]:
    scored = _read_committed(output, "scored")
    if scored is None:
        raise ScoringError(f"{rows.path}: no row could be scored (see {output}/scores/{REJECTED_DIR})")
    result, baselines = kind_spec(model.kind).measure(rows, scored, train, names)
    if train is not None:
        baselines["rows_also_in_train_data"] = float(rows_also_in_training(rows, train))
    return result, {**result.metrics(), **baselines}


def log_evaluation(outcome: EvaluationOutcome, summary: dict) -> None:
    """Metrics, the summary, the rejected rows and the kind's own artifacts (a classifier's confusion matrix)."""
    import mlflow

    from jobs.scoring.pipeline import counts_metrics

    mlflow.log_metrics({**outcome.metrics, **{f"pipeline_{k}": v for k, v in counts_metrics(outcome.counts).items()}})
    mlflow.log_dict(summary, "evaluation.json")
    if outcome.rejected:
        mlflow.log_table({"id": [r["id"] for r in outcome.rejected], "reason": [r["reason"] for r in outcome.rejected]},
                         "rejected_rows.json")
    kind_spec(outcome.model.kind).log_artifacts(outcome.result, outcome.label_names)


def link_model_version(outcome: EvaluationOutcome, summary: dict, target: TrackingTarget) -> None:
    """Tags on a registered version naming this evaluation (a local directory or a bare run has no version)."""
    resolved = outcome.model.resolved
    if not resolved.registered:
        return
    client = client_for(target)
    headline = kind_spec(outcome.model.kind).headline_metric
    client.set_model_version_tag(resolved.name, resolved.version, "last_evaluation_run_id", outcome.run_id)
    client.set_model_version_tag(resolved.name, resolved.version, f"evaluation.{summary['data_digest']}",
                                 json.dumps({"run_id": outcome.run_id, "data": summary["data"],
                                             headline: round(outcome.metrics.get(headline, float("nan")), 6)}))


def _rejected_rows(output: str) -> list[dict]:
    rejected = _read_committed(output, "rejected")
    return [] if rejected is None else rejected.select(["id", "reason"]).to_pylist()


def run(config: EvaluateConfig) -> EvaluationOutcome:
    import mlflow

    target = prepare_tracking(config.tracking)
    # the labelled files are read by the driver and staged under output_dir for the workers
    require_shared(config.ray, {"output_dir": config.output_dir, "model": local_model_dir(config.model)},
                   target.tracking_uri)
    model = ScoringModel.load(config.model, target)
    rows, train, names = read_rows(config, model)  # every input problem fails here, before any compute
    run_name = config.run_name or unique_run_name("evaluate")
    output = output_location(config.output_dir, run_name)
    resolved = model.resolved
    digest = file_digest(config.input.path)
    with mlflow.start_run(experiment_id=target.experiment_id, run_name=run_name, log_system_metrics=True,
                          tags={**environment_tags(), "job": "evaluate", "model_name": resolved.name,
                                "model_version": resolved.version, "model_run_id": resolved.run_id,
                                "model_uri": resolved.load_uri, "data_digest": digest}) as active:
        mlflow.log_params(redact_mapping({"model_ref": config.model, "rows": len(rows.ids),
                                          **config_lib.flatten(config_lib.to_dict(config))}))
        # what the model was measured on ("test") and, given input.train_path, what the baselines were fitted on
        log_datasets([(input_summary(config.input.path, len(rows.ids)), "test")]
                     + ([(input_summary(config.input.train_path, len(train.ids)), "training")] if train else []))
        counts = score_rows(rows, model, config, output)
        result, metrics = measure(rows, train, names, model, output)
        outcome = EvaluationOutcome(run_id=active.info.run_id, model=model, counts=counts, metrics=metrics,
                                    result=result, label_names=names, rejected=_rejected_rows(output),
                                    output_path=output)
        summary = {"data": str(Path(config.input.path).resolve()), "data_digest": digest, "model_kind": model.kind,
                   "rows_in": counts.rows_in, "rows_scored": counts.rows_out, "rows_rejected": counts.rows_rejected,
                   "rejected_by_reason": counts.rejected_by_reason, "label_names": names}
        log_evaluation(outcome, summary)
        link_model_version(outcome, summary, target)
        set_description(target, outcome.run_id, evaluation_description(outcome, config))
    return outcome


def evaluation_description(outcome: EvaluationOutcome, config: EvaluateConfig) -> str:
    """The run's description (markdown): which model on which rows, its scores beside the baselines."""
    m, counts, resolved = outcome.metrics, outcome.counts, outcome.model.resolved
    spec = kind_spec(outcome.model.kind)
    columns, titles = list(spec.summary_columns), spec.baseline_titles
    rows = {"**model**": {c: m[c] for c in columns if c in m}}
    for name, title in titles.items():
        values = {c: m[f"baseline_{name}_eval_{c}"] for c in columns if f"baseline_{name}_eval_{c}" in m}
        if values:
            rows[f"baseline: {title}"] = values
    lines = [f"**evaluate**: `{resolved.name}` version {resolved.version} ({outcome.model.kind}) on "
             f"`{redact_text(config.input.path)}`: {counts.rows_in:,} rows, {counts.rows_out:,} scored, "
             f"{counts.rows_rejected:,} rejected.", "", metrics_table(rows, columns)]
    if m.get("rows_also_in_train_data"):
        lines += ["", f"**Warning**: {m['rows_also_in_train_data']:.0f} evaluated row(s) also appear in the training "
                      "file (input.train_path)."]
    return "\n".join(lines)
