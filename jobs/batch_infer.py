"""Score a Parquet corpus with a classifier or a seq2seq model through a streaming Ray Data pipeline.

    python -m jobs.batch_infer --config configs/batch_infer.local-cpu.yaml

read + tag bad rows (``ScoringSource`` tasks) -> tokenize (CPU tasks) -> predict (actor pool,
model loaded once per actor, tagged rows skipped) -> ``SplitScoredSink`` (scored rows to
``<output>/``, rejected rows to ``<output>/_rejected/``) -> ``_SUCCESS`` manifest. One pass over
the data, streaming: nothing is materialised. Each scored row keeps the input id and adds the
predicted label, its name and its probability (a seq2seq model: the ``generated`` text, decoded
greedily or by beam search in the actors, which tokenize with the model's own vocabulary) and
the model name, version and run id that scored it; each rejected row has ``id``, ``reason`` and
``source_file``. Rows out + rows rejected = rows in, checked before the manifest is written.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.paths import ParquetFiles, resolve_parquet_files
from data_pipeline.quarantine import (TAG_COLUMNS, FileInfo, InputFileError, ReadSettings, ScoringGroup,
                                      ScoringSource, describe_failure, inspect_files)
from jobs import config as config_lib
from jobs.datasets import StageResources
from jobs.model_registry import ModelKind, ResolvedModel, materialize_model, model_kind, resolve_model_ref
from jobs.predictors import (ClassifierPredictor, PredictorSettings, Seq2SeqPredictor, TokenizingClassifierPredictor,
                             tokenize_tagged)
from jobs.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.scored_output import REJECTED_DIR, SCORED_SCHEMAS, SplitScoredSink, write_manifest
from jobs.tracking import TrackingConfig, environment_tags, prepare_tracking


@dataclass(frozen=True, kw_only=True)
class SinkSettings:
    num_cpus: float = 0.25  # per write task; writes run beside the predictor actors
    compression: str = "zstd"


@dataclass(frozen=True, kw_only=True)
class BatchInferConfig:
    input: str = "data/corpus/test.parquet"  # a file, a directory or a glob; local or s3://
    output_dir: str = "runs/scores"  # each run writes <output_dir>/<run name>/
    model: str = "models:/review-sentiment@candidate"  # models:/name@alias, models:/name/version, run id, dir
    text_column: str = "text"
    max_length: int = 128
    read: ReadSettings = field(default_factory=ReadSettings)
    stages: StageResources = field(default_factory=StageResources)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="batch-infer"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ScoringSettings:
    """The pipeline's knobs, shared by ``batch_infer`` and ``score_partitions``."""
    text_column: str = "text"
    max_length: int = 128
    read: ReadSettings = field(default_factory=ReadSettings)
    stages: StageResources = field(default_factory=StageResources)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)

    @classmethod
    def of(cls, config) -> "ScoringSettings":
        return cls(text_column=config.text_column, max_length=config.max_length, read=config.read,
                   stages=config.stages, predictor=config.predictor, sink=config.sink)

    def tokenize_stage(self, kind: ModelKind) -> bool:
        """A separate tokenizer stage feeds classifiers; seq2seq predictors tokenize with their own vocabulary."""
        return kind == "classifier" and not self.predictor.tokenize_in_actor

    def cpu_demands(self, kind: ModelKind) -> dict[str, float]:
        stages = self.stages
        tokenize = stages.tokenize_cpus * stages.tokenize_concurrency if self.tokenize_stage(kind) else 0.0
        return {"read": stages.read_cpus, "tokenize": tokenize,
                "predict": self.predictor.num_cpus * self.predictor.concurrency, "write": self.sink.num_cpus}


@dataclass(frozen=True)
class ScoringModel:
    """A model resolved once on the driver; ``local_dir`` is reused by workers that can see it."""
    resolved: ResolvedModel
    tracking_uri: str | None
    local_dir: str
    kind: ModelKind  # classifier: label + probability per row; seq2seq: the decoded text

    @classmethod
    def load(cls, ref: str, target) -> "ScoringModel":
        return cls.of(resolve_model_ref(ref, target), target.tracking_uri if target is not None else None)

    @classmethod
    def of(cls, resolved: ResolvedModel, tracking_uri: str | None) -> "ScoringModel":
        local_dir = materialize_model(resolved, tracking_uri)
        kind = model_kind(local_dir)
        if kind is None:
            raise FileNotFoundError(f"{resolved.load_uri}: neither a Hugging Face classifier (config.json) "
                                    "nor a seq2seq export (seq2seq_config.json)")
        return cls(resolved, tracking_uri, str(local_dir), kind)


@dataclass(frozen=True)
class PipelineCounts:
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    files: list[dict]
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


class ScoringError(RuntimeError):
    """A scoring pipeline failed; the message names the bad input file when one is to blame."""


@dataclass(frozen=True)
class ScoringOutcome:
    run_id: str
    output_path: str
    rows_in: int
    rows_out: int
    rows_per_s: float
    model_version: str
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_path: str = ""
    seconds: float = 0.0


def output_location(output_dir: str, name: str) -> str:
    if "://" in output_dir:
        return f"{output_dir.rstrip('/')}/{name}"
    return str(Path(output_dir).resolve() / name)


def score_groups(groups: list[ScoringGroup], outputs: dict[str, str], model: ScoringModel,
                 settings: ScoringSettings) -> dict[str, PipelineCounts | str]:
    """One streaming pipeline for several groups of files (partitions), each written to its own output.

    read+tag -> tokenize -> predict -> split write. Returns, per group, its row counts or the
    error that failed it (a corrupt file named; rows out + rejected != rows in). Raises
    ``ScoringError`` when the pipeline itself fails. Never writes a manifest: committing is the
    caller's step, so a failed or killed run's output is never mistaken for a complete one.
    """
    import ray.data

    start = time.perf_counter()
    stages, predictor = settings.stages, settings.predictor
    common = {"resolved": model.resolved, "tracking_uri": model.tracking_uri, "local_model_dir": model.local_dir}
    sink = SplitScoredSink(outputs, compression=settings.sink.compression, scored_schema=SCORED_SCHEMAS[model.kind])
    try:
        ds = ray.data.read_datasource(ScoringSource(groups, settings.text_column, settings.read),
                                      override_num_blocks=max(stages.min_blocks, 1), num_cpus=stages.read_cpus)
        tokenize = {"text_column": settings.text_column, "max_length": settings.max_length,
                    "keep_columns": list(TAG_COLUMNS)}
        if model.kind == "seq2seq":
            predictor_class, predictor_kwargs, batch_format = Seq2SeqPredictor, tokenize, "pyarrow"
        elif not settings.tokenize_stage(model.kind):
            predictor_class, predictor_kwargs, batch_format = TokenizingClassifierPredictor, tokenize, "pyarrow"
        else:
            ds = ds.map_batches(tokenize_tagged, fn_kwargs={**common, **tokenize},
                                batch_format="pyarrow", batch_size=stages.tokenize_batch_rows,
                                compute=ray.data.TaskPoolStrategy(size=stages.tokenize_concurrency),
                                num_cpus=stages.tokenize_cpus)
            predictor_class, predictor_kwargs, batch_format = ClassifierPredictor, {}, "numpy"
        ds = ds.map_batches(predictor_class, fn_constructor_kwargs={**common, **predictor_kwargs,
                                                                    "settings": predictor},
                            batch_size=predictor.rows_per_call, batch_format=batch_format,
                            compute=ray.data.ActorPoolStrategy(size=predictor.concurrency),
                            num_cpus=predictor.num_cpus, num_gpus=predictor.num_gpus)
        ds.write_datasink(sink, ray_remote_args={"num_cpus": settings.sink.num_cpus})
    except Exception as exc:  # Ray wraps worker errors; surface the file that caused them
        raise ScoringError(describe_failure(exc)) from exc
    seconds = time.perf_counter() - start
    results: dict[str, PipelineCounts | str] = {}
    for group in groups:
        written = (sink.result or {}).get(group.name, {"files": [], "rows_out": 0, "rows_rejected": 0,
                                                       "rejected_by_reason": {}, "errors": []})
        if written["errors"]:
            results[group.name] = "; ".join(written["errors"])
            continue
        counts = PipelineCounts(rows_in=group.rows, rows_out=written["rows_out"],
                                rows_rejected=written["rows_rejected"],
                                rejected_by_reason=written["rejected_by_reason"], files=written["files"],
                                seconds=seconds)
        if counts.rows_out + counts.rows_rejected != counts.rows_in:
            results[group.name] = (f"{outputs[group.name]}: {counts.rows_out} rows scored + {counts.rows_rejected} "
                                   f"rejected != {counts.rows_in} rows in: rows were lost or duplicated")
        else:
            results[group.name] = counts
    return results


def score_files(files: ParquetFiles, infos: list[FileInfo], output: str, model: ScoringModel,
                settings: ScoringSettings) -> PipelineCounts:
    """Score one input into ``output``; raises ``ScoringError`` naming the bad file, if any."""
    result = score_groups([ScoringGroup("", files, tuple(infos))], {"": output}, model, settings)[""]
    if isinstance(result, str):
        raise ScoringError(result)
    return result


def manifest_for(counts: PipelineCounts, infos: list[FileInfo], model: ScoringModel, **extra) -> dict:
    return {"rows_in": counts.rows_in, "rows_out": counts.rows_out, "rows_rejected": counts.rows_rejected,
            "rejected_by_reason": counts.rejected_by_reason, "files": counts.files,
            "inputs": [info.fingerprint() for info in infos],
            "model": {"name": model.resolved.name, "version": model.resolved.version,
                      "run_id": model.resolved.run_id, "kind": model.kind},
            "seconds": round(counts.seconds, 3), "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra}


def summary_line(counts: PipelineCounts) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in counts.rejected_by_reason.items())
    return (f"rows in {counts.rows_in}, out {counts.rows_out}, rejected {counts.rows_rejected}"
            f"{f' ({reasons})' if reasons else ''}; {counts.rows_per_s:.0f} rows/s over {counts.seconds:.1f} s")


def counts_metrics(counts: PipelineCounts) -> dict[str, float]:
    metrics = {"rows_in": counts.rows_in, "rows_out": counts.rows_out, "rows_rejected": counts.rows_rejected,
               "rows_per_s": counts.rows_per_s, "seconds": counts.seconds}
    metrics.update({f"rows_rejected_{reason}": n for reason, n in counts.rejected_by_reason.items()})
    return metrics


def run(config: BatchInferConfig) -> ScoringOutcome:
    import mlflow

    settings = ScoringSettings.of(config)
    files = resolve_parquet_files(config.input)
    infos = inspect_files(files, config.text_column)  # footers only: a corrupt file fails here, by name
    target = prepare_tracking(config.tracking)
    model = ScoringModel.load(config.model, target)
    init_ray(config.ray)
    check_cpu_budget(settings.cpu_demands(model.kind))

    run_name = config.run_name or f"score-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    output = output_location(config.output_dir, run_name)
    resolved = model.resolved
    with mlflow.start_run(experiment_id=target.experiment_id, run_name=run_name,
                          tags={**environment_tags(), "job": "batch_infer"}) as run:
        mlflow.log_params({"input": config.input, "output": output, "model_ref": config.model,
                           "model_name": resolved.name, "model_version": resolved.version,
                           "model_run_id": resolved.run_id, **config_lib.flatten(config_lib.to_dict(config))})
        counts = score_files(files, infos, output, model, settings)
        manifest = manifest_for(counts, infos, model, mlflow_run_id=run.info.run_id)
        write_manifest(output, manifest)  # last: the directory is complete once _SUCCESS exists
        mlflow.log_metrics(counts_metrics(counts))
        mlflow.log_dict(manifest, "scoring_manifest.json")
    return ScoringOutcome(run_id=run.info.run_id, output_path=output, rows_in=counts.rows_in,
                          rows_out=counts.rows_out, rows_per_s=counts.rows_per_s, model_version=resolved.version,
                          rows_rejected=counts.rows_rejected, rejected_by_reason=counts.rejected_by_reason,
                          rejected_path=f"{output}/{REJECTED_DIR}", seconds=counts.seconds)


def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(BatchInferConfig, __doc__.splitlines()[0], argv)
    try:
        outcome = run(config)
    except (InputFileError, ScoringError, FileNotFoundError) as exc:
        print(f"\nbatch scoring failed: {exc}", file=sys.stderr)
        return 1
    print("\n=== batch scoring finished ===")
    print(f"rows in {outcome.rows_in}, out {outcome.rows_out}, rejected {outcome.rows_rejected}"
          + (f" ({', '.join(f'{k} {v}' for k, v in outcome.rejected_by_reason.items())})"
             if outcome.rejected_by_reason else "")
          + f"; {outcome.rows_per_s:.0f} rows/s over {outcome.seconds:.1f} s")
    print(f"model version {outcome.model_version}; output {outcome.output_path} "
          f"(rejected rows: {outcome.rejected_path}); MLflow run {outcome.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
