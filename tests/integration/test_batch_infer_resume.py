"""batch_infer killed mid-run resumes with the same run_name: committed chunks kept, every row once.

The job runs as ``python -m jobs.batch_infer`` attached to the session's Ray, one input file
per chunk, pausing after each chunk's commit; it is SIGKILLed after the first of three chunks.
The rerun scores the two files left with another ``chunk_rows`` (not part of what a resume must
match), one chunk each, in one pipeline: its one scoring actor loads the model once for both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.scoring.sink import committed_files, read_manifest

REPO = Path(__file__).resolve().parents[2]
RUN = "resumable"


def job_config(folder: Path, output_dir: Path, model_dir: Path) -> dict:
    return {"input": {"path": str(folder)}, "output_dir": str(output_dir), "model": str(model_dir), "run_name": RUN,
            "chunk_rows": 12, "max_length": 32, "stages": {"min_blocks": 1, "tokenize_batch_rows": 64},
            "predictor": {"concurrency": 1, "num_cpus": 0.5, "rows_per_call": 32, "tokenize_in_actor": True},
            "tracking": {"experiment": "test-batch-infer-resume"}}


def _scoring_actors() -> set[str]:
    """Ids of every scoring actor this Ray has started, alive or not (Ray Data names them after the stage)."""
    from ray._private import state

    return {actor_id for actor_id, info in state.actors().items()
            if info["ActorClassName"].startswith("MapWorker(") and "Predictor" in info["ActorClassName"]}


@pytest.mark.slow
def test_killed_run_resumes_scoring_only_the_rest_and_publishes_every_row_once(
        ray_local, mlflow_uri, tiny_corpus: Path, tiny_model_dir: Path, tmp_path: Path):
    from jobs.scoring.batch import BatchInferConfig, run
    from jobs.common import config as config_lib

    folder, scores = tmp_path / "in", tmp_path / "scores"
    folder.mkdir()
    table = pq.read_table(tiny_corpus / "train.parquet").select(["id", "text"]).slice(0, 36)
    table = pa.concat_tables([table, pa.table({"id": ["empty-1"], "text": [" "]}, schema=table.schema)])  # rejected
    for k, (start, rows) in enumerate(((0, 12), (12, 12), (24, 13))):  # three files, one chunk each
        pq.write_table(table.slice(start, rows), folder / f"part-{k}.parquet")
    ids = table.column("id").to_pylist()

    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(job_config(folder, scores, tiny_model_dir)))
    log = tmp_path / "killed.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONPATH": str(REPO),
           "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "BATCH_INFER_PAUSE_AFTER_CHUNK_S": "5"}
    chunks = scores / "_staging" / RUN / "chunks"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.batch_infer", "--config", str(config_path)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list(chunks.glob("*.json")):  # the kill lands in the pause after the first chunk
            assert proc.poll() is None, f"the job exited ({proc.returncode}) too early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"timed out waiting for a chunk:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started in its session
        proc.wait()
    first = [json.loads(p.read_text()) for p in sorted(chunks.glob("*.json"))]
    assert len(first) == 1
    assert not (scores / RUN).exists()  # nothing half-published: no part files without _SUCCESS
    # A write task killed mid-chunk leaves a file no chunk lists: it must never be published.
    pq.write_table(pa.table({"id": ["ghost"]}), scores / "_staging" / RUN / "output" / "part-99999-ghost.parquet")

    actors_before = _scoring_actors()
    outcome = run(config_lib.load(BatchInferConfig, config_path, ["chunk_rows=13"]))

    assert (outcome.chunks_resumed, outcome.chunks_scored, outcome.rows_resumed) == (1, 2, 12)
    # before: each chunk a pipeline of its own, and each started its actor pool (here 1 actor) again
    assert len(_scoring_actors() - actors_before) == 1
    manifest = read_manifest(outcome.output_path)
    assert manifest["rows_in"] == len(ids) == manifest["rows_out"] + manifest["rows_rejected"]
    assert manifest["rows_rejected"] == 1
    scored = [i for p in committed_files(outcome.output_path) for i in pq.read_table(p).column("id").to_pylist()]
    rejected = [i for p in committed_files(outcome.output_path, "rejected")
                for i in pq.read_table(p).column("id").to_pylist()]
    assert sorted(scored + rejected) == sorted(ids)  # every id exactly once
    on_disk = sorted(str(p.relative_to(scores / RUN)) for p in (scores / RUN).rglob("*.parquet"))
    assert on_disk == sorted(f["path"] for f in manifest["files"])  # no ghost, no unlisted file
    assert sorted(i for p in (scores / RUN).rglob("*.parquet") for i in pq.read_table(p).column("id").to_pylist()) \
        == sorted(ids)  # a reader of the whole directory (Spark, pyarrow.dataset) sees each row once too

    killed_files = {f for c in first for f in (fp["file"] for fp in c["inputs"])}
    by_rerun = {f for c in manifest["chunks"] if c["scored_by"] == outcome.run_id for f in c["inputs"]}
    everything = {str(folder / f"part-{k}.parquet") for k in range(3)}
    assert len(killed_files) == 1 and by_rerun == everything - killed_files  # the rerun scored only the rest
    assert not (scores / "_staging" / RUN).exists()
