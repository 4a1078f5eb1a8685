"""The jobs on a real local Ray against an object store having a bad day (tests/s3_faults.py).

Faults are injected for real between the jobs and a moto S3 server: 503s on a training checkpoint's
upload; on a part file's upload (in a Ray write task), on an input file's data (in a Ray read task),
on a chunk record and on the target's manifest; and for the scheduled scorer, on a lease renewal
and on a committed version's manifest. Every scoring case ends with every id exactly once in the
committed output, reading the whole directory (not only the files the manifest lists), rows out +
rejected = rows in, and no file outside a manifest.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import filesystem_for
from data_pipeline.storage import Storage
from jobs.common.config import load
from jobs.scoring.publish import MANIFEST
from jobs.scoring.sink import read_manifest
from s3_faults import Fault, faulty_s3

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "bad-day"
# Quick retries (the defaults wait up to 15.5 s); more attempts than any fault below lasts.
RETRY = ["storage.attempts=6", "storage.first_backoff_s=0.05", "storage.max_backoff_s=0.5"]
SMALL = ["max_length=32", "stages.min_blocks=1", "predictor.concurrency=1", "predictor.tokenize_in_actor=true"]


@pytest.fixture(scope="module")
def store(ray_local, session_dir, tiny_corpus: Path):
    """The object store behind its proxy, holding the val and test splits as two input files."""
    with faulty_s3(session_dir / "scoring-faults", (BUCKET,)) as proxy:
        fs, _ = filesystem_for(f"s3://{BUCKET}")
        for split in ("val", "test"):
            pq.write_table(pq.read_table(tiny_corpus / f"{split}.parquet").select(["id", "text"]),
                           f"{BUCKET}/incoming/{split}.parquet", filesystem=fs, row_group_size=8)
        yield proxy


@pytest.fixture
def faults(store):
    store.clear()
    yield store
    store.clear()


def whole_directory(uri: str) -> tuple[dict[str, int], dict]:
    """Every file under an output directory (not only those its manifest lists), and the manifest."""
    fs, base = filesystem_for(uri)
    return Storage(fs).files(base), read_manifest(uri)


def read_ids(uri: str, relative: list[str]) -> list[str]:
    fs, base = filesystem_for(uri)
    return [i for r in relative for i in pq.read_table(f"{base}/{r}", filesystem=fs).column("id").to_pylist()]


def assert_exactly_once(uri: str, expected_ids: list[str]) -> dict:
    files, manifest = whole_directory(uri)
    assert manifest is not None, f"{uri} has no manifest"
    listed = {f["path"] for f in manifest["files"]}
    assert set(files) == listed | {MANIFEST}, "a file outside the manifest"
    data = sorted(p for p in files if p != MANIFEST)
    assert sorted(read_ids(uri, data)) == sorted(expected_ids)  # every file read: each id exactly once
    assert manifest["rows_out"] + manifest["rows_rejected"] == manifest["rows_in"] == len(expected_ids)
    return manifest


def input_ids(tiny_corpus: Path) -> list[str]:
    return [i for split in ("val", "test") for i in pq.read_table(tiny_corpus / f"{split}.parquet")
            .column("id").to_pylist()]


def test_batch_infer_finishes_through_storage_errors_with_every_row_once(faults, mlflow_uri, tiny_model_dir,
                                                                          tiny_corpus):
    from jobs.scoring.batch import BatchInferConfig, run

    injected = [faults.add(Fault(key="scores/nightly/part-", method="PUT", times=4)),  # a write task's upload
                faults.add(Fault(key="incoming/test.parquet", method="GET", after=2, times=4)),  # a read task, mid-file
                faults.add(Fault(key="scores/_staging/nightly/chunks/", method="PUT", times=4)),  # a chunk's commit
                faults.add(Fault(key=f"scores/nightly/{MANIFEST}", method="HEAD", times=4))]  # publish's check
    config = load(BatchInferConfig, REPO / "configs/batch_infer.local-cpu.yaml", SMALL + RETRY + [
        f"input.path=s3://{BUCKET}/incoming/", f"output_dir=s3://{BUCKET}/scores", f"model={tiny_model_dir}",
        "run_name=nightly", "tracking.experiment=test-storage-faults"])
    outcome = run(config)
    assert [len(f.hits) for f in injected] == [f.times for f in injected], "a fault was never met"
    assert_exactly_once(outcome.output_path, input_ids(tiny_corpus))
    assert not Storage(filesystem_for(f"s3://{BUCKET}")[0]).files(f"{BUCKET}/scores/_staging")  # staging gone


def _partitions(fs: pafs.FileSystem, tiny_corpus: Path) -> dict[str, list[str]]:
    rows = pq.read_table(tiny_corpus / "test.parquet").select(["id", "text"])
    out = {}
    for n in (1, 2, 3):
        part = rows.slice((n - 1) * 4, 4)
        pq.write_table(part, f"{BUCKET}/daily/date={n}/part-0.parquet", filesystem=fs)
        with fs.open_output_stream(f"{BUCKET}/daily/date={n}/_SUCCESS") as marker:
            marker.write(b"")
        out[f"date={n}"] = part.column("id").to_pylist()
    return out


def test_score_partitions_through_storage_errors_never_scores_a_partition_twice(faults, mlflow_uri, tiny_model_dir,
                                                                                tiny_corpus):
    from jobs.scoring.partitions import ScorePartitionsConfig, run

    fs, _ = filesystem_for(f"s3://{BUCKET}")
    ids = _partitions(fs, tiny_corpus)
    overrides = SMALL + RETRY + [f"input.path=s3://{BUCKET}/daily", f"output_root=s3://{BUCKET}/scored",
                                 f"model={tiny_model_dir}", "lease.heartbeat_s=0.5", "lease.ttl_s=60",
                                 "tracking.experiment=test-storage-faults-partitions"]
    config = load(ScorePartitionsConfig, REPO / "configs/score_partitions.local-cpu.yaml", overrides)
    # A lease renewal and the commit's lease check fail for a while: the lease is kept, the partition commits.
    # after=1: the lease's creation (its PUT, its read-back) goes through; its renewals meet the faults
    renew = faults.add(Fault(key="scored/_leases/date=1/", method="PUT", after=1, times=4))
    check = faults.add(Fault(key="scored/_leases/date=2/", method="GET", after=1, times=4))
    first = run(config)
    assert [p.status for p in first.partitions] == ["scored"] * 3, [p.error for p in first.partitions]
    assert len(renew.hits) == 4 and len(check.hits) == 4
    for name, expected in ids.items():
        assert_exactly_once(f"s3://{BUCKET}/scored/{name}/v1", expected)

    # Then v1's manifest of date=1 cannot be read for the whole run, and date=2's for a moment. Before, a
    # failed read was "not committed": date=1 was scored again into v1, beside its committed files.
    faults.clear()
    faults.add(Fault(key=f"scored/date=1/v1/{MANIFEST}", method="GET", times=1000))
    faults.add(Fault(key=f"scored/date=2/v1/{MANIFEST}", method="GET", times=3))
    second = run(config)
    status = {p.partition: (p.status, p.reason) for p in second.partitions}
    assert status["date=1"][0] == "failed" and "gave up after" in second.partitions[0].error
    assert status["date=2"] == ("skipped", "done") and status["date=3"] == ("skipped", "done")

    faults.clear()
    third = run(config)
    assert {p.partition: p.reason for p in third.partitions} == {name: "done" for name in ids}
    for name, expected in ids.items():
        versions = {i.base_name for i in Storage(fs).list(f"{BUCKET}/scored/{name}")}
        assert versions == {"v1"}, (name, versions)
        assert_exactly_once(f"s3://{BUCKET}/scored/{name}/v1", expected)


def test_training_checkpoints_upload_through_storage_errors(faults, mlflow_uri, tiny_corpus, tiny_model_dir,
                                                            session_dir):
    """Ray Train uploads each checkpoint itself, and drops the error of a file whose upload failed: the
    checkpoint was recorded complete without its state. Its requests now outlast more 503s than the AWS
    SDK's default three attempts, and what the upload left is checked and completed."""
    from jobs.train.classifier import FinetuneConfig
    from jobs.train.classifier import run as run_finetune

    name = "through-503s"
    # five 503s in a row for one file's upload: the SDK's default three attempts would all meet them
    upload = faults.add(Fault(path=rf"/ray/{name}/epoch-0000-step-\d+/train_state\.pt", method="PUT", times=5))
    overrides = [f"data.{split}={tiny_corpus / f'{split}.parquet'}" for split in ("train", "val", "test")] + [
        f"model.name_or_path={tiny_model_dir}", f"run.storage_path=s3://{BUCKET}/ray", f"run.name={name}",
        "run.max_failures=0", "optim.epochs=2", "tracking.experiment=test-storage-faults-training"]
    outcome = run_finetune(load(FinetuneConfig, REPO / "configs/finetune_classifier.tiny.yaml", overrides))
    fs, _ = filesystem_for(f"s3://{BUCKET}")
    stored = Storage(fs).files(f"{BUCKET}/ray/{name}")
    completed = sorted(p.split("/")[0] for p in stored if p.endswith("/COMPLETE"))
    assert [p.split("-step-")[0] for p in completed] == ["epoch-0000", "epoch-0001"]
    for checkpoint in completed:  # before: "Checkpoint successfully created" with its train_state.pt missing
        for part in ("train_state.pt", "job_config.json", "model/config.json", "model/model.safetensors"):
            assert stored.get(f"{checkpoint}/{part}", 0) > 0, (checkpoint, part)
    assert len(upload.hits) == 5
    assert outcome.checkpoint_path.startswith(f"s3://{BUCKET}/ray/{name}/epoch-0001-")
