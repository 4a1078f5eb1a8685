"""batch_infer killed mid-run resumes with the same run_name: committed chunks kept, every row once.

The job runs as ``python -m jobs.batch_infer`` attached to the session's Ray, one input file
per chunk, pausing after each chunk's commit; it is SIGKILLed after two of four chunks.
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
    return {"input": str(folder), "output_dir": str(output_dir), "model": str(model_dir), "run_name": RUN,
            "chunk_rows": 12, "max_length": 32, "stages": {"min_blocks": 1, "tokenize_batch_rows": 64},
            "predictor": {"concurrency": 1, "num_cpus": 0.5, "rows_per_call": 32, "tokenize_in_actor": True},
            "tracking": {"experiment": "test-batch-infer-resume"}}


@pytest.mark.slow
def test_killed_run_resumes_scoring_only_the_rest_and_publishes_every_row_once(
        ray_local, mlflow_uri, tiny_corpus: Path, tiny_model_dir: Path, tmp_path: Path):
    from jobs.batch_infer import BatchInferConfig, run
    from jobs.common import config as config_lib

    folder, scores = tmp_path / "in", tmp_path / "scores"
    folder.mkdir()
    table = pq.read_table(tiny_corpus / "train.parquet").select(["id", "text"]).slice(0, 48)
    for k in range(4):  # four files of 12 rows: one chunk each
        pq.write_table(table.slice(12 * k, 12), folder / f"part-{k}.parquet")
    pq.write_table(pa.table({"id": ["empty-1"], "text": [" "]}), folder / "part-4.parquet")  # rejected
    ids = table.column("id").to_pylist() + ["empty-1"]

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
        while len(list(chunks.glob("*.json"))) < 2:  # the kill lands in the pause after the second chunk
            assert proc.poll() is None, f"the job exited ({proc.returncode}) too early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"timed out waiting for two chunks:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started in its session
        proc.wait()
    first = [json.loads(p.read_text()) for p in sorted(chunks.glob("*.json"))]
    assert len(first) == 2
    assert not (scores / RUN).exists()  # nothing half-published: no part files without _SUCCESS
    # A write task killed mid-chunk leaves a file no chunk lists: it must never be published.
    pq.write_table(pa.table({"id": ["ghost"]}), scores / "_staging" / RUN / "output" / "part-99999-ghost.parquet")

    outcome = run(config_lib.load(BatchInferConfig, config_path))

    assert (outcome.chunks_resumed, outcome.chunks_scored, outcome.rows_resumed) == (2, 3, 24)
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
    everything = {str(folder / f"part-{k}.parquet") for k in range(5)}
    assert len(killed_files) == 2 and by_rerun == everything - killed_files  # the rerun scored only the rest
    assert not (scores / "_staging" / RUN).exists()
