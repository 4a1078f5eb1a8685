"""SplitScoredWriter's write, run in-process on real files (no Ray cluster): durable files when it returns."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.scoring.sink import SplitScoredWriter


def tagged_rows(group: str) -> pa.Table:
    """Two scored rows and one rejected row of one scoring group, as they leave the predictor."""
    n = 3
    return pa.table({"id": ["a", "b", "c"], "label": [1, 0, None], "label_name": ["pos", "neg", None],
                     "probability": pa.array([0.9, 0.2, None], pa.float32()), "truncated": [False] * n,
                     "model_name": ["m"] * n, "model_version": ["1"] * n, "model_run_id": ["r"] * n,
                     "source_file": ["f.parquet"] * n, "reject_reason": [None, None, "empty_text"],
                     "scorable": [True, True, False], "scoring_group": [group] * n})


def test_write_task_fsyncs_each_file_it_wrote(tmp_path, monkeypatch):
    """A power cut cannot be simulated: record which files the write task fsyncs (os.fsync wrapped, still real).

    The files are closed and fsynced on the node that wrote them before the task reports them, so
    a commit never publishes data that is only in that node's page cache.
    """
    outputs = {"date=1": str(tmp_path / "date=1"), "date=2": str(tmp_path / "date=2")}
    sink = SplitScoredWriter(outputs)
    sink.create_dirs()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    stats = sink.write([tagged_rows("date=1"), tagged_rows("date=2")])

    written = sorted(f"{outputs[group]}/{f['path']}" for group, entry in stats.items() for f in entry["files"])
    assert len(written) == 4  # scored and rejected, for each group
    assert sorted(synced) == written
    assert sum(pq.read_table(p).num_rows for p in written) == 6


def test_groups_sharing_one_folder_get_files_of_their_own(tmp_path):
    """A batch run's chunks write to one staging folder; a block holding rows of two chunks wrote both
    chunks' rows to the same file name before, the second overwriting the first."""
    sink = SplitScoredWriter({"chunk-0": str(tmp_path), "chunk-1": str(tmp_path)})
    sink.create_dirs()
    stats = sink.write([pa.concat_tables([tagged_rows("chunk-0"), tagged_rows("chunk-1")])])

    paths = [f["path"] for entry in stats.values() for f in entry["files"]]
    assert len(set(paths)) == len(paths) == 4
    for group, entry in stats.items():
        assert sum(pq.read_table(tmp_path / f["path"]).num_rows for f in entry["files"]) == 3
