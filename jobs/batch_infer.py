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
from dataclasses import dataclass, field

from data_pipeline.quarantine import InputFileError, inspect_files
from data_pipeline.readers import FileFormat, InputFormatError
from jobs.common import config as config_lib
from jobs.common.naming import unique_run_name
from jobs.common.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.tracking import TrackingConfig, environment_tags, prepare_tracking
from jobs.scoring.pipeline import (PipelineCounts, ScoringError, ScoringModel, counts_metrics, manifest_for,
                                   output_location, score_files, summary_line)
from jobs.scoring.inputs import remove_staging, scoring_input
from jobs.scoring.settings import ScoringSettings
from jobs.scoring.sink import REJECTED_DIR, write_manifest


@dataclass(frozen=True, kw_only=True)
class BatchInferConfig(ScoringSettings):
    input: str = "data/corpus/test.parquet"  # Parquet: a file, a directory or a glob, local or s3://; or a
    # local .csv / .tsv / .jsonl file (read with input_format, then staged as Parquet for the pipeline)
    input_format: FileFormat = field(default_factory=FileFormat)
    output_dir: str = "runs/scores"  # each run writes <output_dir>/<run name>/
    model: str = "models:/review-sentiment@candidate"  # models:/name@alias, models:/name/version, run id, dir
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="batch-infer"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None


@dataclass(frozen=True)
class ScoringOutcome:
    run_id: str
    output_path: str
    counts: PipelineCounts
    model_version: str
    rejected_path: str

    @property
    def rows_in(self) -> int:
        return self.counts.rows_in

    @property
    def rows_out(self) -> int:
        return self.counts.rows_out

    @property
    def rows_rejected(self) -> int:
        return self.counts.rows_rejected

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return self.counts.rejected_by_reason

    @property
    def rows_per_s(self) -> float:
        return self.counts.rows_per_s


def run(config: BatchInferConfig) -> ScoringOutcome:
    run_name = config.run_name or unique_run_name("score")
    staging = output_location(config.output_dir, f"_staging/{run_name}")  # where every node can read it
    try:
        return _run(config, run_name, staging)
    finally:
        remove_staging(staging)


def _run(config: BatchInferConfig, run_name: str, staging: str) -> ScoringOutcome:
    import mlflow

    files = scoring_input(config.input, config.input_format, config.input_columns, staging)
    infos = inspect_files(files, config.input_columns)  # footers only: a corrupt file fails here, by name
    target = prepare_tracking(config.tracking)
    model = ScoringModel.load(config.model, target)
    init_ray(config.ray)
    check_cpu_budget(config.cpu_demands(model.kind))

    output = output_location(config.output_dir, run_name)
    resolved = model.resolved
    with mlflow.start_run(experiment_id=target.experiment_id, run_name=run_name,
                          tags={**environment_tags(), "job": "batch_infer"}) as run:
        mlflow.log_params(redact_mapping({"input": config.input, "output": output, "model_ref": config.model,
                           "model_name": resolved.name, "model_version": resolved.version,
                           "model_run_id": resolved.run_id, **config_lib.flatten(config_lib.to_dict(config))}))
        counts = score_files(files, infos, output, model, config, config.input_columns)
        manifest = manifest_for(counts, infos, model, mlflow_run_id=run.info.run_id, source=config.input)
        write_manifest(output, manifest)  # last: the directory is complete once _SUCCESS exists
        mlflow.log_metrics(counts_metrics(counts))
        mlflow.log_dict(manifest, "scoring_manifest.json")
    return ScoringOutcome(run_id=run.info.run_id, output_path=output, counts=counts, model_version=resolved.version,
                          rejected_path=f"{output}/{REJECTED_DIR}")


def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(BatchInferConfig, __doc__.splitlines()[0], argv)
    try:
        outcome = run(config)
    except (InputFileError, InputFormatError, ScoringError, FileNotFoundError) as exc:
        print(f"\nbatch scoring failed: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    print("\n=== batch scoring finished ===")
    print(summary_line(outcome.counts))
    print(f"model version {outcome.model_version}; output {redact_text(outcome.output_path)} "
          f"(rejected rows: {outcome.rejected_path}); MLflow run {outcome.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
