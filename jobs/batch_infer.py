"""Score a Parquet corpus with a classifier through a streaming Ray Data pipeline.

    python -m jobs.batch_infer --config configs/batch_infer.local-cpu.yaml

read -> validate -> tokenize (CPU actors) -> predict (actor pool, model loaded once per actor)
-> write_parquet. Each output row keeps the input id and adds the predicted label, its name,
its probability and the model name, version and run id that scored it.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.paths import filesystem_for, resolve_parquet_files
from data_pipeline.schema import classification_spec
from data_pipeline.validation import validate_files
from jobs import config as config_lib
from jobs.datasets import StageResources, read_parquet, tokenized
from jobs.model_registry import materialize_model, resolve_model_ref
from jobs.predictors import ClassifierPredictor, PredictorSettings
from jobs.ray_runtime import RayConfig, init_ray
from jobs.tracking import TrackingConfig, environment_tags, prepare_tracking


@dataclass(frozen=True, kw_only=True)
class BatchInferConfig:
    input: str = "data/corpus/test.parquet"  # a file, a directory or a glob; local or s3://
    output_dir: str = "runs/scores"  # each run writes <output_dir>/<run name>/
    model: str = "models:/review-sentiment@candidate"  # models:/name@alias, models:/name/version, run id, dir
    text_column: str = "text"
    max_length: int = 128
    stages: StageResources = field(default_factory=StageResources)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="batch-infer"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None


@dataclass(frozen=True)
class ScoringOutcome:
    run_id: str
    output_path: str
    rows_in: int
    rows_out: int
    rows_per_s: float
    model_version: str


def count_rows(path: str) -> int:
    import pyarrow.parquet as pq

    files = resolve_parquet_files(path)
    total = 0
    for p in files.paths:
        with files.filesystem.open_input_file(p) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def run(config: BatchInferConfig) -> ScoringOutcome:
    import mlflow
    import ray.data

    files = resolve_parquet_files(config.input)
    report = validate_files(files, classification_spec(config.text_column, with_label=False))
    target = prepare_tracking(config.tracking)
    resolved = resolve_model_ref(config.model, target)
    tokenizer_dir = str(materialize_model(resolved, target.tracking_uri))  # the tokenizer saved with the model
    init_ray(config.ray)

    run_name = config.run_name or f"score-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    output = f"{config.output_dir.rstrip('/')}/{run_name}" if "://" in config.output_dir \
        else str(Path(config.output_dir).resolve() / run_name)
    predictor = config.predictor
    start = time.perf_counter()
    with mlflow.start_run(experiment_id=target.experiment_id, run_name=run_name,
                          tags={**environment_tags(), "job": "batch_infer"}) as run:
        mlflow.log_params({"input": config.input, "output": output, "model_ref": config.model,
                           "model_name": resolved.name, "model_version": resolved.version,
                           "model_run_id": resolved.run_id, **config_lib.flatten(config_lib.to_dict(config))})
        ds = read_parquet(files, ["id", config.text_column], config.stages)
        ds = tokenized(ds, tokenizer_dir, config.text_column, config.max_length, ["id"], config.stages)
        ds = ds.map_batches(ClassifierPredictor, fn_constructor_kwargs={
            "resolved": resolved, "tracking_uri": target.tracking_uri, "settings": predictor},
            batch_size=predictor.rows_per_call, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=predictor.concurrency),
            num_cpus=predictor.num_cpus, num_gpus=predictor.num_gpus)
        out_fs, out_path = filesystem_for(output)
        ds.write_parquet(out_path, filesystem=out_fs)
        elapsed = time.perf_counter() - start
        rows_out = count_rows(output)
        rows_per_s = rows_out / elapsed
        mlflow.log_metrics({"rows_in": report.rows, "rows_out": rows_out, "rows_rejected": 0,
                            "rows_per_s": rows_per_s, "seconds": elapsed})
        if rows_out != report.rows:
            raise RuntimeError(f"scored {rows_out} rows from {report.rows} input rows: rows were lost")
    return ScoringOutcome(run_id=run.info.run_id, output_path=output, rows_in=report.rows, rows_out=rows_out,
                          rows_per_s=rows_per_s, model_version=resolved.version)


def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(BatchInferConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    print("\n=== batch scoring finished ===")
    print(f"rows in {outcome.rows_in}, rows out {outcome.rows_out}, {outcome.rows_per_s:.0f} rows/s")
    print(f"model version {outcome.model_version}; output {outcome.output_path}; MLflow run {outcome.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
