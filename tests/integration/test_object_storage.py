"""Shared storage on a real S3-compatible HTTP endpoint (a moto server started here, on 127.0.0.1).

The corpus is read from s3://, Ray Train checkpoints go to s3:// and a rerun of the same run
name resumes from them, MLflow keeps the model's artifacts in the bucket, and batch scoring
reads s3:// input and writes its scores, rejected rows and ``_SUCCESS`` manifest to s3://.

The moto server starts after the session's Ray, so Ray's workers never see ``AWS_ENDPOINT_URL``:
everything they write must go through filesystems the driver resolved and shipped to them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import filesystem_for
from jobs.scoring.batch import BatchInferConfig
from jobs.scoring.batch import run as run_scoring
from jobs.common.config import load
from jobs.train.classifier import FinetuneConfig
from jobs.train.classifier import run as run_finetune
from jobs.scoring.sink import MANIFEST, committed_files, read_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "text-jobs"
REGISTERED = "s3-sentiment"
RUN_NAME = "s3-finetune"
# moto accepts any credentials; set them before Ray starts so its workers sign requests the
# same way (on a cluster: instance roles, or env vars in the job's runtime_env).
for _key, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_key, _value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(endpoint: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"moto_server did not answer on {endpoint}")


@pytest.fixture(scope="module")
def s3(ray_local, tiny_corpus: Path, session_dir: Path):
    """A moto S3 server process with one bucket holding the tiny corpus under corpus/."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(session_dir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # the one setting: pyarrow (data_pipeline.paths) and boto3 (MLflow)
    try:
        _wait_until_up(endpoint, proc)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)  # boto3 finds the endpoint in the same variable
        fs, _ = filesystem_for(f"s3://{BUCKET}")
        for split in ("train", "val", "test"):
            pafs.copy_files(str(tiny_corpus / f"{split}.parquet"), f"{BUCKET}/corpus/{split}.parquet",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        yield fs
    finally:
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _keys(fs: pafs.FileSystem, prefix: str) -> list[str]:
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    return sorted(i.path[len(BUCKET) + 1:] for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)


def _finetune(tiny_model_dir: Path, epochs: int):
    corpus = f"s3://{BUCKET}/corpus"
    overrides = [f"data.train={corpus}/train.parquet", f"data.val={corpus}/val.parquet",
                 f"data.test={corpus}/test.parquet", f"model.name_or_path={tiny_model_dir}",
                 f"run.storage_path=s3://{BUCKET}/ray", f"run.name={RUN_NAME}", f"optim.epochs={epochs}",
                 "tracking.experiment=test-s3-finetune", f"tracking.registered_model={REGISTERED}",
                 f"tracking.artifact_location=s3://{BUCKET}/mlflow"]
    return run_finetune(load(FinetuneConfig, REPO / "configs/finetune_classifier.tiny.yaml", overrides))


@pytest.fixture(scope="module")
def trained(s3, mlflow_uri, tiny_model_dir: Path):
    """One epoch, then a rerun of the same run name with two: the second resumes from S3."""
    first = _finetune(tiny_model_dir, epochs=1)
    second = _finetune(tiny_model_dir, epochs=2)
    return first, second


def test_training_reads_s3_checkpoints_to_s3_and_resumes_by_name(s3, trained, mlflow_uri):
    first, second = trained
    assert first.checkpoint_path.startswith(f"s3://{BUCKET}/ray/{RUN_NAME}/epoch-0000-")
    assert second.checkpoint_path.startswith(f"s3://{BUCKET}/ray/{RUN_NAME}/epoch-0001-")
    keys = _keys(s3, f"ray/{RUN_NAME}")
    for checkpoint in (first.checkpoint_path, second.checkpoint_path):
        prefix = checkpoint[len(f"s3://{BUCKET}/"):]
        for name in ("COMPLETE", "train_state.pt", "model/config.json", "model/model.safetensors"):
            assert f"{prefix}/{name}" in keys, (name, keys)
    assert not any(Path(p).exists() for p in ("s3:", f"{BUCKET}/ray")), "something wrote a local 's3:' folder"

    client = mlflow.MlflowClient(mlflow_uri)
    assert second.run_id == first.run_id, "the rerun did not continue the run of the same name"
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    # the rerun resumed from the S3 checkpoint of epoch 0 instead of training it again
    assert run.data.tags.get("resumed_from_steps") == str(int(first.metrics["step"]))
    assert second.metrics["step"] == 2 * first.metrics["step"]
    steps = [m.step for m in client.get_metric_history(first.run_id, "train_loss")]
    assert len(steps) == len(set(steps)) == second.metrics["step"]


def test_model_artifacts_live_in_the_bucket_and_load_back(s3, trained, mlflow_uri):
    _, second = trained
    client = mlflow.MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert str(version.version) == second.registered_version
    keys = _keys(s3, "mlflow")
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any(k.endswith("model.safetensors") for k in keys), keys
    assert client.get_experiment_by_name("test-s3-finetune").artifact_location == f"s3://{BUCKET}/mlflow"
    import pandas as pd

    out = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@candidate").predict(pd.DataFrame({"text": ["质量很好"]}))
    assert list(out.columns) == ["label", "label_name", "probability"]


def test_batch_scoring_reads_and_writes_s3(s3, trained, tiny_corpus: Path):
    # The test split plus a file with unscorable rows, under one s3:// input directory.
    test_ids = pq.read_table(tiny_corpus / "test.parquet").column("id").to_pylist()
    pafs.copy_files(str(tiny_corpus / "test.parquet"), f"{BUCKET}/incoming/test.parquet",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    bad = pa.table({"id": ["ok-1", "empty-1", "null-1", "ok-2"], "text": ["很好", "  ", None, "太差了"]})
    pq.write_table(bad, f"{BUCKET}/incoming/extra.parquet", filesystem=s3)

    overrides = [f"input.path=s3://{BUCKET}/incoming/", f"output_dir=s3://{BUCKET}/scores",
                 f"model=models:/{REGISTERED}@candidate", "max_length=64", "stages.min_blocks=2",
                 "tracking.experiment=test-s3-batch-infer", "run_name=s3-scores"]
    outcome = run_scoring(load(BatchInferConfig, REPO / "configs/batch_infer.local-cpu.yaml", overrides))

    output = f"s3://{BUCKET}/scores/s3-scores"
    assert outcome.output_path == output
    assert f"scores/s3-scores/{MANIFEST}" in _keys(s3, "scores")
    manifest = read_manifest(output)
    rows_in = len(test_ids) + bad.num_rows
    assert manifest["rows_in"] == rows_in
    assert manifest["rows_out"] + manifest["rows_rejected"] == rows_in
    assert manifest["rejected_by_reason"] == {"empty_text": 1, "null_text": 1}

    def read_back(kind: str) -> pa.Table:  # exactly the files the manifest lists, read from the bucket
        fs, _ = filesystem_for(output)
        paths = [uri[len("s3://"):] for uri in committed_files(output, kind)]
        assert paths and all(p.startswith(f"{BUCKET}/scores/s3-scores/") for p in paths)
        return pa.concat_tables(pq.read_table(p, filesystem=fs) for p in paths)

    scored, rejected = read_back("scored"), read_back("rejected")
    assert scored.num_rows == manifest["rows_out"] == outcome.rows_out == len(test_ids) + 2
    assert rejected.num_rows == manifest["rows_rejected"] == outcome.rows_rejected == 2
    assert sorted(scored.column("id").to_pylist() + rejected.column("id").to_pylist()) == sorted(
        test_ids + bad.column("id").to_pylist())
    assert set(rejected.column("source_file").to_pylist()) == {f"s3://{BUCKET}/incoming/extra.parquet"}
    assert set(scored.column("model_version").to_pylist()) == {trained[1].registered_version}


def test_batch_scoring_on_s3_refuses_a_published_output_and_replaces_it_on_request(s3, mlflow_uri, tiny_model_dir,
                                                                                   tiny_corpus: Path):
    from jobs.scoring.run_staging import TargetOccupied

    overrides = [f"output_dir=s3://{BUCKET}/daily", f"model={tiny_model_dir}", "max_length=32", "stages.min_blocks=1",
                 "predictor.concurrency=1", "predictor.tokenize_in_actor=true", "run_name=today",
                 "tracking.experiment=test-s3-replace"]
    config = REPO / "configs/batch_infer.local-cpu.yaml"
    first = run_scoring(load(BatchInferConfig, config, overrides + [f"input.path=s3://{BUCKET}/corpus/val.parquet"]))
    old = read_manifest(first.output_path)
    with pytest.raises(TargetOccupied, match="replace=true"):
        run_scoring(load(BatchInferConfig, config, overrides + [f"input.path=s3://{BUCKET}/corpus/test.parquet"]))
    assert read_manifest(first.output_path) == old  # untouched
    # A killed attempt's file beside the published ones: listed by no manifest, it must go.
    pq.write_table(pa.table({"id": ["ghost"]}), f"{BUCKET}/daily/today/part-99999-ghost.parquet", filesystem=s3)

    second = run_scoring(load(BatchInferConfig, config, overrides + [f"input.path=s3://{BUCKET}/corpus/test.parquet",
                                                                       "replace=true"]))

    manifest = read_manifest(second.output_path)
    test_ids = pq.read_table(tiny_corpus / "test.parquet").column("id").to_pylist()
    assert manifest["rows_in"] == len(test_ids) and manifest["mlflow_run_id"] == second.run_id
    assert _keys(s3, "daily") == sorted([f"daily/today/{MANIFEST}"] +
                                        [f"daily/today/{f['path']}" for f in manifest["files"]])  # no old, no ghost
    assert not {f["path"] for f in old["files"]} & {f["path"] for f in manifest["files"]}
    scored = pa.concat_tables(pq.read_table(uri[len("s3://"):], filesystem=s3)
                              for uri in committed_files(second.output_path))
    assert sorted(scored.column("id").to_pylist()) == sorted(test_ids)
