"""Batch scoring's run: a Parquet corpus through a streaming Ray Data pipeline (``jobs.batch_infer``).

read + tag bad rows (``ScoringSource`` tasks) -> tokenize (CPU tasks) -> predict (actor pool,
model loaded once per actor, tagged rows skipped) -> ``SplitScoredWriter`` (scored rows to
``<output>/``, rejected rows to ``<output>/_rejected/``) -> ``_SUCCESS`` manifest. One pass over
the data, streaming: nothing is materialised. Each scored row keeps the input id and adds the
predicted label, its name and its probability (a seq2seq model: the ``generated`` text, decoded
greedily or by beam search in the actors, which tokenize with the model's own vocabulary) and
the model name, version and run id that scored it; each rejected row has ``id``, ``reason`` and
``source_file``. Rows out + rows rejected = rows in, checked before the manifest is written.

Nothing is visible at ``<output_dir>/<run_name>/`` until the run is complete: the input is
scored in chunks of whole files (``chunk_rows``), all in one pipeline (its actors load the model
once), each committed to the run's staging area ``<output_dir>/_staging/<run_name>/`` as soon as
its rows are written, and the output is published atomically at the end
(``jobs.scoring.run_staging`` has the layout and the protocol). A run that crashed resumes when
started again with the same ``run_name``: it scores only the files no committed chunk covers.
A target that already holds output is refused unless ``replace`` is set.

The MLflow run's summary (counts, manifest, description) is written after the publish and is
bookkeeping: when MLflow does not answer within ``tracking.outage_tolerance_s`` the job still
exits 0 (the output is complete) and warns with the command that records the summary later
(``python -m jobs.record_scoring --output <output>``).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from data_pipeline.paths import ParquetFiles
from data_pipeline.quarantine import ScoringGroup, UnreadableFile, inspect_inputs
from jobs.common import config as config_lib
from jobs.common.naming import unique_run_name
from jobs.common.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.datasets import file_summary, log_datasets, parquet_summary
from jobs.common.shared_storage import local_model_dir, require_shared
from jobs.common.tracking import (TrackingConfig, client_for, environment_tags, log_params, prepare_tracking,
                                  resolve_tracking_uri, start_system_metrics, stop_system_metrics)
from jobs.kinds import kind_spec
from jobs.scoring.inputs import needs_staging, scoring_input, source_fingerprints
from jobs.scoring.pipeline import PipelineCounts, ScoringError, ScoringModel, manifest_for, score_groups
from jobs.scoring.recording import record_published
from jobs.scoring.run_staging import Chunk, RunStaging, plan_chunks
from jobs.scoring.settings import RENAMED_COLUMNS, PipelineSettings, ScoringInput
from jobs.scoring.sink import REJECTED_DIR

# Fault injection for tests: seconds to wait after each chunk is committed to the staging area,
# so a test can kill the job with some chunks done and others not started.
PAUSE_AFTER_CHUNK_ENV = "BATCH_INFER_PAUSE_AFTER_CHUNK_S"


@dataclass(frozen=True, kw_only=True)
class BatchInput(ScoringInput):
    """The rows to score: Parquet as it is, or a user's CSV / JSON Lines file read with ``format``."""
    # Parquet: a file, a directory or a glob, local or s3://; or a local .csv / .tsv / .jsonl file (read with
    # format, then staged as Parquet for the pipeline)
    path: str = "data/corpus/test.parquet"


@dataclass(frozen=True, kw_only=True)
class BatchInferConfig(PipelineSettings):
    EXAMPLE_OVERRIDE: ClassVar[str] = "predictor.concurrency=4"  # --help's --set example (a unit test loads it)
    # Keys that moved to the input section every data-reading job shares (jobs.common.inputs): refused by name
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"input": "input.path", "input_format": "input.format", **RENAMED_COLUMNS}
    input: BatchInput = field(default_factory=BatchInput)  # what to score and how to read it
    output_dir: str = "runs/scores"  # each run writes <output_dir>/<run name>/
    model: str = "models:/review-sentiment@candidate"  # models:/name@alias, models:/name/version, run id, dir
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="batch-infer"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None  # None: a new unique name. Naming a run makes it resumable: started again
    # with the same run_name after a crash, it scores only the files no committed chunk covers
    replace: bool = False  # replace an existing non-empty <output_dir>/<run_name>/ (atomically); else refuse it
    chunk_rows: int = 1_000_000  # the unit of resume: input files are scored in chunks of about this many
    # rows (whole files; a bigger file is a chunk alone), all in one pipeline, each committed to staging when done


@dataclass(frozen=True)
class ScoringOutcome:
    run_id: str
    output_path: str
    counts: PipelineCounts
    model_version: str
    rejected_path: str
    chunks_scored: int = 0
    chunks_resumed: int = 0  # committed by an earlier attempt of the same run_name
    rows_resumed: int = 0

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
    # a local CSV / JSON Lines input is read by the driver alone (staged beside the outputs for the workers)
    data = config.input
    require_shared(config.ray, {"input.path": None if needs_staging(data.path, data.format) else data.path,
                                "output_dir": config.output_dir, "model": local_model_dir(config.model)},
                   resolve_tracking_uri(config.tracking))
    run_name = config.run_name or unique_run_name("score")
    staging = RunStaging(config.output_dir, run_name, replace=config.replace, retry=config.storage)
    staging.check_target()  # before any work: a rerun into a published output fails at once
    try:
        return _run(config, run_name, staging)
    except BaseException:
        try:
            keep = staging.has_progress()
            if not keep:
                staging.remove()  # nothing to resume from: no staging, no unpublished files in the target
        except OSError:  # the store is unreachable: leave it as it is, report the run's own error
            keep = True
        if keep:  # a rerun with this run_name resumes from it
            print(f"batch scoring: committed chunks kept in {staging.root}; rerun with run_name={run_name} "
                  "to resume", file=sys.stderr, flush=True)
        raise


def run_fingerprint(config: BatchInferConfig, model: ScoringModel) -> dict:
    """What the scored rows depend on besides the input files: a resume with anything else starts fresh."""
    resolved, columns = model.resolved, config.input.columns
    # the settings keep their names of before the input section, so a crashed run still resumes across that change
    return {"model": {"load_uri": resolved.load_uri, "name": resolved.name, "version": resolved.version,
                      "run_id": resolved.run_id, "kind": model.kind},
            "settings": {"max_length": config.max_length, "text_column": columns.text,
                         "text_pair_column": columns.pair, "id_column": columns.id,
                         **config.predictor.numerics()}}


def _run(config: BatchInferConfig, run_name: str, staging: RunStaging) -> ScoringOutcome:
    data = config.input
    files = scoring_input(data.path, data.format, data.columns, staging.input_uri)
    # footers only: a corrupt file fails here, by name, or is quarantined (read.on_unreadable_file)
    infos, unreadable = inspect_inputs(files, data.columns, config.read.on_unreadable_file, config.storage)
    sources = source_fingerprints(data.path, data.format, infos)
    target = prepare_tracking(config.tracking)
    model = ScoringModel.load(config.model, target)
    kind_spec(model.kind).check_input(model.local_dir, config.model, _readable(files, infos))
    resumed = staging.open(run_fingerprint(config, model), sources)
    covered = set().union(*(c.input_files for c in resumed))
    todo = [i for i, fp in enumerate(sources) if fp["file"] not in covered]
    if resumed:
        print(f"resuming {run_name}: {len(resumed)} chunk(s), {sum(c.record['rows_in'] for c in resumed)} rows "
              f"committed by an earlier attempt; {len(todo)} of {len(infos)} file(s) left to score", flush=True)
    plan = [[todo[k] for k in chunk] for chunk in plan_chunks([infos[i].num_rows for i in todo], config.chunk_rows)]
    if any(infos[i].num_rows for chunk in plan for i in chunk):
        init_ray(config.ray)
        check_cpu_budget(config.cpu_demands(model.kind))

    output = staging.target
    resolved = model.resolved
    tags = {**environment_tags(), "job": "batch_infer", "resumed_chunks": str(len(resumed))}
    # The run's client, not the fluent API: an active run left open by an unreachable server would
    # block the process's exit (MLflow ends active runs at exit) and any later run in the process.
    client = client_for(target)
    run_id = client.create_run(target.experiment_id, run_name=run_name, tags=tags).info.run_id
    monitor = start_system_metrics(target, run_id, node_id=None, resume=False)
    try:
        log_params(client, run_id, redact_mapping({
            "input": data.path, "output": output, "model_ref": config.model, "model_name": resolved.name,
            "model_version": resolved.version, "model_run_id": resolved.run_id,
            **config_lib.flatten(config_lib.to_dict(config))}))
        # the user's file for a CSV / JSON Lines input (its staged Parquet copy is rewritten by every run)
        log_datasets([(file_summary(data.path, sum(i.num_rows for i in infos), list(data.columns.names))
                       if needs_staging(data.path, data.format)
                       else parquet_summary(data.path, _readable(files, infos)), "scoring")],
                     client=client, run_id=run_id)
        chunks = list(resumed)
        attempt = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        chunks += _score_chunks([[infos[i] for i in chunk] for chunk in plan],
                                [[sources[i] for i in chunk] for chunk in plan],
                                attempt, files, staging, model, config, run_id)
        counts = _total(chunks, infos, unreadable)
        manifest = manifest_for(counts, infos, model, config.predictor, mlflow_run_id=run_id,
                                source=data.path, inputs=sources, chunks=[_chunk_summary(c) for c in chunks])
        staging.publish(manifest)  # atomic: nothing at the target before, all of it after
    except BaseException:
        stop_system_metrics(monitor)
        _end_failed(client, run_id)
        raise
    stop_system_metrics(monitor)
    for item in counts.unreadable:
        print(f"quarantined {redact_text(item['file'])}: {item['reason']} ({item['rows']} rows not read)",
              file=sys.stderr, flush=True)
    # The output is complete: the summary below is bookkeeping; when MLflow does not answer it is a warning.
    record_published(target, manifest, output, config.tracking.outage_tolerance_s)
    return ScoringOutcome(run_id=run_id, output_path=output, counts=counts, model_version=resolved.version,
                          rejected_path=f"{output}/{REJECTED_DIR}", chunks_scored=len(plan),
                          chunks_resumed=len(resumed), rows_resumed=sum(c.record["rows_in"] for c in resumed))


def _end_failed(client, run_id: str) -> None:
    """Mark the run FAILED, one try: the scoring error is the one to report, not MLflow's."""
    try:
        client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001
        print(f"WARNING: MLflow run {run_id} could not be marked FAILED ({redact_text(str(exc))})",
              file=sys.stderr, flush=True)


def _score_chunks(plan: list[list], sources: list[list[dict]], attempt: str, files: ParquetFiles,
                  staging: RunStaging, model: ScoringModel, config: BatchInferConfig,
                  mlflow_run_id: str) -> list[Chunk]:
    """Score the planned chunks of whole files in one pipeline, committing each to staging as it completes.

    One pipeline, so its actors load the model once for the whole run, not once per chunk; a chunk
    is committed the moment all its rows are written, while the others go on.
    """
    names = [f"{attempt}-{number:05d}" for number in range(len(plan))]
    groups = [ScoringGroup(name, _readable(files, infos), tuple(infos)) for name, infos in zip(names, plan)]
    index = {name: number for number, name in enumerate(names)}
    committed: list[Chunk] = []
    pause = float(os.environ.get(PAUSE_AFTER_CHUNK_ENV, "0") or 0)
    last = 0.0  # seconds into the pipeline of the previous commit: each chunk's record gets its own share

    def commit(name: str, counts: PipelineCounts | str) -> None:
        nonlocal last
        if isinstance(counts, str):
            raise ScoringError(counts)
        committed.append(staging.commit_chunk(name, {
            "inputs": sources[index[name]], "files": counts.files, "rows_in": counts.rows_in,
            "rows_out": counts.rows_out, "rows_rejected": counts.rows_rejected,
            "rejected_by_reason": counts.rejected_by_reason, "unreadable": list(counts.unreadable),
            "seconds": round(counts.seconds - last, 3), "scored_by": mlflow_run_id}))
        last = counts.seconds
        print(f"chunk {len(committed)}/{len(plan)} committed: {len(plan[index[name]])} file(s), "
              f"{counts.rows_in} rows", flush=True)
        if pause > 0:
            time.sleep(pause)

    results = score_groups(groups, {name: staging.write_uri for name in names}, model, config,
                           config.input.columns, on_group_done=commit)
    for name in names:  # a chunk short of rows or with late (duplicated) ones fails the run; none is published
        if isinstance(results[name], str):
            raise ScoringError(results[name])
    return committed


def _readable(files: ParquetFiles, infos: list) -> ParquetFiles:
    """The input files whose footers were read (those quarantined aside)."""
    return ParquetFiles(files.filesystem, tuple(info.path for info in infos), files.uri_prefix)


def _total(chunks: list[Chunk], infos: list, unreadable: list[UnreadableFile]) -> PipelineCounts:
    """The run's counts from its chunks, checked: every input row scored, rejected or quarantined exactly once."""
    reasons: dict[str, int] = {}
    for chunk in chunks:
        for reason, n in chunk.record["rejected_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    files = sorted((f for c in chunks for f in c.record["files"]), key=lambda f: f["path"])
    quarantined = (tuple(u.as_dict() for u in unreadable)
                   + tuple(u for c in chunks for u in c.record.get("unreadable", [])))
    counts = PipelineCounts(rows_in=sum(c.record["rows_in"] for c in chunks),
                            rows_out=sum(c.record["rows_out"] for c in chunks),
                            rows_rejected=sum(c.record["rows_rejected"] for c in chunks),
                            rejected_by_reason=dict(sorted(reasons.items())), files=files,
                            seconds=sum(c.record["seconds"] for c in chunks), unreadable=quarantined)
    rows_in = sum(info.num_rows for info in infos)
    if counts.rows_in != rows_in or not counts.balanced():
        raise ScoringError(f"{counts.rows_out} rows scored + {counts.rows_rejected} rejected + "
                           f"{counts.rows_unreadable} unreadable over the chunks != {rows_in} rows in: "
                           "rows were lost or duplicated")
    return counts


def _chunk_summary(chunk: Chunk) -> dict:
    return {"name": chunk.name, "inputs": sorted(chunk.input_files), "rows_in": chunk.record["rows_in"],
            "scored_by": chunk.record["scored_by"], "committed_at": chunk.record["committed_at"]}
