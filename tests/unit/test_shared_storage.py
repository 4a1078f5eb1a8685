"""Paths a cluster of several nodes must share (jobs.common.shared_storage), on a mount table of our own."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.common.config import ConfigError
from jobs.common.shared_storage import check_shared, filesystem_type, is_shared, node_local_tracking


@pytest.fixture
def mounts(tmp_path: Path) -> str:
    shared = tmp_path / "nfs"
    (shared / "runs").mkdir(parents=True)
    table = tmp_path / "mounts"
    table.write_text(f"/dev/sda1 / ext4 rw 0 0\n10.0.0.2:/export {shared} nfs4 rw 0 0\n"
                     f"tmpfs {tmp_path / 'scratch'} tmpfs rw 0 0\n")
    return str(table)


def test_uris_and_network_mounts_are_shared_local_disks_are_not(tmp_path: Path, mounts: str):
    assert is_shared("s3://bucket/ray", table=mounts) and is_shared("gs://bucket/x", table=mounts)
    assert not is_shared("file:///tmp/ray", table=mounts)
    assert filesystem_type(str(tmp_path / "nfs" / "runs" / "not-yet-made"), mounts) == "nfs4"
    assert is_shared(str(tmp_path / "nfs" / "runs"), table=mounts)
    assert not is_shared(str(tmp_path / "scratch" / "out"), table=mounts)
    assert not is_shared("runs/ray", table=mounts)  # relative: the cwd's disk (ext4 at /)
    assert is_shared(str(tmp_path / "scratch" / "out"), declared=(str(tmp_path / "scratch"),), table=mounts)


def test_one_node_needs_nothing_shared(mounts: str):
    check_shared({"run.storage_path": "runs/ray"}, "sqlite:///mlflow.db", nodes=1, table=mounts)


def test_several_nodes_refuse_each_local_path_and_a_local_tracking_store(tmp_path: Path, mounts: str):
    with pytest.raises(ConfigError) as refused:
        check_shared({"run.storage_path": "runs/ray", "data.train": "s3://b/train.parquet",
                      "data.val": str(tmp_path / "nfs" / "runs" / "val.parquet"), "model.warm_start": None,
                      "output_dir": str(tmp_path / "scratch" / "scores")},
                     "sqlite:////tmp/mlflow.db", nodes=3, table=mounts)
    message = str(refused.value)
    assert "has 3 nodes" in message and "run.storage_path: runs/ray" in message and "output_dir:" in message
    assert "data.train" not in message and "data.val" not in message  # s3:// and the NFS mount are fine
    assert "sqlite:////tmp/mlflow.db" in message and "s3://bucket" in message and "ray.shared_paths" in message


def test_tracking_stores_only_this_node_reaches():
    assert node_local_tracking("sqlite:///mlflow.db") and node_local_tracking("file:///mlruns")
    assert node_local_tracking("./mlruns")
    assert not node_local_tracking("http://mlflow.internal:5000") and not node_local_tracking("databricks")
