"""Publishing primitives: unlisted leftovers are removed before a directory is published."""

from __future__ import annotations

import pyarrow.fs as pafs

from data_pipeline.storage import Storage
from jobs.common.durable import sync_tree
from jobs.scoring.publish import listed_files, remove_unlisted


def test_remove_unlisted_deletes_only_files_the_manifest_does_not_list(tmp_path):
    for relative in ("part-0.parquet", "part-1-retried.parquet", "_rejected/part-0.parquet", "_rejected/old.parquet"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    manifest = {"files": [{"path": "part-0.parquet"}, {"path": "_rejected/part-0.parquet"}]}

    removed = remove_unlisted(Storage(pafs.LocalFileSystem()), str(tmp_path), listed_files(manifest))

    assert removed == ["_rejected/old.parquet", "part-1-retried.parquet"]
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["_rejected/part-0.parquet", "part-0.parquet"]


def test_sync_tree_walks_files_and_directories(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"1")
    sync_tree(str(tmp_path))  # raises if a listed file cannot be opened for fsync
