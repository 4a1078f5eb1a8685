"""An object store's bad day, for real: a moto S3 server behind a proxy that answers 503/500, resets
connections or stalls for chosen requests (tests/s3_faults.py). No Ray here: the storage calls of the
scoring jobs (sink write task, read task, footers, leases, manifests, the ledger, the run staging) are
called in-process on the real endpoint; tests/integration/test_scoring_storage_faults.py runs the jobs.

Each fault outlasts the AWS SDK inside pyarrow, which retries a request three times at most (and a
GetObject 503 on a small object not at all: the error body overflows the object-sized buffer,
``INTERNAL_FAILURE``), so only the project's retries save it.
"""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import filesystem_for, resolve_parquet_files
from data_pipeline.quarantine import FILE_ERROR, InputColumns, inspect_file, read_tagged
from data_pipeline.storage import Storage, StorageError, StorageRetry
from jobs.scoring.ledger import Attempt, Lease, LeaseSettings, Store, committed_versions
from jobs.scoring.publish import MANIFEST
from jobs.scoring.run_staging import RunStaging
from jobs.scoring.sink import SplitScoredWriter
from s3_faults import Fault, faulty_s3

BUCKET = "faults"
FAST = StorageRetry(attempts=4, first_backoff_s=0.05, max_backoff_s=0.2)  # the defaults wait 15.5 s in all


@pytest.fixture(scope="module")
def proxy(session_dir):
    with faulty_s3(session_dir / "storage-faults", (BUCKET,)) as proxy:
        yield proxy


@pytest.fixture
def faults(proxy):
    proxy.clear()
    yield proxy
    proxy.clear()


def s3(key: str) -> tuple:
    fs, path = filesystem_for(f"s3://{BUCKET}/{key}")
    return fs, path


def put(key: str, data: bytes) -> None:
    fs, path = s3(key)
    with fs.open_output_stream(path) as out:
        out.write(data)


# ------------------------------------------------------------------ reads: absent only when not found

def test_a_failed_read_is_retried_not_taken_for_absent(faults):
    put("reads/state.json", b'{"fingerprint": 1}')
    fs, path = s3("reads/state.json")
    faults.add(Fault(key="reads/state.json", method="GET", times=3))  # 3 of our 4 tries (the SDK makes 1)
    assert Storage(fs, FAST).read_json(path) == {"fingerprint": 1}
    assert len(faults.faults[0].hits) == 3
    assert Storage(fs, FAST).read_json(s3("reads/none.json")[1]) is None  # absent is still absent


def test_a_read_that_keeps_failing_raises_naming_the_path(faults):
    put("reads/manifest.json", b'{"files": []}')
    fs, path = s3("reads/manifest.json")
    faults.add(Fault(key="reads/manifest.json", method="GET", times=100))
    with pytest.raises(StorageError, match=r"read faults/reads/manifest.json: .*gave up after 4 attempt"):
        Storage(fs, FAST).read_json(path)


# ------------------------------------------------------------------ leases and committed versions

def test_a_lease_survives_a_failed_read_of_its_file(faults):
    store = Store(f"s3://{BUCKET}/lease-out")
    lease = Lease.acquire(store, "date=1", LeaseSettings(ttl_s=60, heartbeat_s=30), {"scheduled_run_id": "r"})
    assert lease is not None
    fault = faults.add(Fault(key="lease-out/_leases/date=1/0000000001.json", method="GET", times=4))
    lease.check()  # before: the failed read looked like "our lease file changed hands", lost for good
    assert lease.lost is None and len(fault.hits) == 4
    lease.release()
    assert store.read_json("_leases", "date=1", "0000000001.json")["released"] is True  # free at once, not in ttl


def test_a_committed_version_whose_manifest_read_fails_is_never_reused(faults):
    """Before: the failed read dropped v1, the next attempt took v1 again and wrote a second set of part
    files into the committed directory (a reader listing it saw every row twice)."""
    store = Store(f"s3://{BUCKET}/versions-out", retry=FAST)
    put("versions-out/date=1/v1/part-0.parquet", b"rows")
    put(f"versions-out/date=1/v1/{MANIFEST}", b'{"files": [{"path": "part-0.parquet", "rows": 1, "kind": "scored"}]}')
    faults.add(Fault(key=f"versions-out/date=1/v1/{MANIFEST}", method="GET", times=3))
    assert [v.number for v in committed_versions(store, "date=1")] == [1]  # a transient failure: retried
    faults.add(Fault(key=f"versions-out/date=1/v1/{MANIFEST}", method="GET", times=100))
    with pytest.raises(StorageError):  # a lasting one fails the partition; it never reads as "not committed"
        committed_versions(store, "date=1")


def test_an_object_store_attempt_on_a_version_with_a_broken_manifest_fails_before_scoring(faults):
    store = Store(f"s3://{BUCKET}/broken-out")
    put("broken-out/date=1/v1/part-0.parquet", b"rows")
    put(f"broken-out/date=1/v1/{MANIFEST}", b"not json")
    from jobs.scoring.publish import CommitFailed

    with pytest.raises(CommitFailed, match="exists without a valid _SUCCESS"):
        Attempt(store, "date=1", 1, "a1").prepare()
    assert Storage(store.fs).files(store.path("date=1/v1")) == {"part-0.parquet": 4, MANIFEST: 8}


# ------------------------------------------------------------------ data files: one failed write retries that file

def _tagged(group: str, n: int = 5) -> pa.Table:
    ids = [f"{group}-{i}" for i in range(n)]
    return pa.table({"id": ids, "label": [1] * n, "label_name": ["pos"] * n,
                     "probability": pa.array([0.9] * n, pa.float32()), "truncated": [False] * n,
                     "model_name": ["m"] * n, "model_version": ["1"] * n, "model_run_id": ["r"] * n,
                     "source_file": ["f.parquet"] * n, "reject_reason": pa.array([None] * n, pa.string()),
                     "scorable": [True] * n, "scoring_group": [group] * n})


def test_a_failed_part_file_write_is_written_again_and_counted_once(faults):
    output = f"s3://{BUCKET}/sink-out/run"
    sink = SplitScoredWriter({"": output}, retry=FAST)
    sink.create_dirs()
    faults.add(Fault(key="sink-out/run/part-", method="PUT", times=4))  # beyond the SDK's three attempts
    stats = sink.write([_tagged("")])
    assert len(faults.faults[0].hits) == 4
    entry = stats[""]
    assert entry["rows_out"] == 5 and [f["rows"] for f in entry["files"]] == [5]
    fs, base = s3("sink-out/run")
    assert list(Storage(fs).files(base)) == [entry["files"][0]["path"]]  # one file: no half-written twin
    assert pq.read_table(f"{base}/{entry['files'][0]['path']}", filesystem=fs).column("id").to_pylist() == \
        [f"-{i}" for i in range(5)]


# ------------------------------------------------------------------ inputs: a storage error is not a corrupt file

def _input(key: str, rows: int = 40, row_group: int = 10) -> str:
    fs, path = s3(key)
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"第{i}条评论" for i in range(rows)]})
    pq.write_table(table, path, filesystem=fs, row_group_size=row_group)
    return f"s3://{BUCKET}/{key}"


def test_a_failed_footer_read_is_retried_not_called_unreadable(faults):
    files = resolve_parquet_files(_input("inputs/footer.parquet"))
    faults.add(Fault(key="inputs/footer.parquet", method="GET", times=4))  # the SDK retries ranged GETs 3 times
    info = inspect_file(files, files.paths[0], InputColumns(), FAST)  # before: InputFileError "unreadable"
    assert info.num_rows == 40


def test_a_read_failing_mid_file_yields_every_row_once(faults):
    files = resolve_parquet_files(_input("inputs/data.parquet"))
    info = inspect_file(files, files.paths[0], InputColumns())
    requests = len(faults.requests)
    # the footer and the first row group are read, then the next four reads fail (the second row group's:
    # the SDK's own three attempts, then ours)
    faults.add(Fault(key="inputs/data.parquet", method="GET", after=2, times=4))
    out = pa.concat_tables(read_tagged(files.filesystem, info.path, info.display, range(4), InputColumns(), 7,
                                       retry=FAST, row_group_rows=info.row_group_rows))
    assert len(faults.faults[0].hits) == 4 and len(faults.requests) > requests
    reasons = [r for r in out.column("reject_reason").to_pylist() if r]
    assert not any(r.startswith(FILE_ERROR) for r in reasons)  # before: an error row, the whole group failed
    assert sorted(out.column("id").to_pylist()) == sorted(f"r{i}" for i in range(40))


def test_a_read_that_keeps_failing_fails_the_task_instead_of_blaming_the_file(faults):
    files = resolve_parquet_files(_input("inputs/down.parquet"))
    info = inspect_file(files, files.paths[0], InputColumns())
    faults.add(Fault(key="inputs/down.parquet", method="GET", times=100))
    with pytest.raises(StorageError, match="down.parquet"):
        list(read_tagged(files.filesystem, info.path, info.display, range(4), InputColumns(), 7, retry=FAST))


# ------------------------------------------------------------------ batch_infer's staging on an object store

def test_an_unpublished_object_store_target_does_not_refuse_its_rerun(faults):
    """Before: a run that failed before its first chunk left part files in the target, and its rerun was
    refused as "not empty"; files without a manifest are not published output."""
    put("runs-out/nightly/part-00000-dead.parquet", b"rows of a failed attempt")
    staging = RunStaging(f"s3://{BUCKET}/runs-out", "nightly", retry=FAST)
    staging.check_target()
    staging.remove()  # what a failed run without progress does now: its unpublished files go too
    assert Storage(staging.fs).files(staging.target_base) == {}
