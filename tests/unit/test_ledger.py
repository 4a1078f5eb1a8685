"""The scheduled scorer's commit protocol on real files: durable, only listed files, loud failures, keys."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from jobs.scoring.ledger import (Attempt, CommitFailed, Ledger, Store, committed_outputs, committed_versions,
                                 partition_key)

MANIFEST = {"files": [{"path": "part-0.parquet", "rows": 2, "kind": "scored"},
                      {"path": "part-1.parquet", "rows": 1, "kind": "scored"},
                      {"path": "_rejected/part-0.parquet", "rows": 1, "kind": "rejected"}],
            "model": {"name": "m", "version": "1"}}


def staged(store: Store, partition: str = "date=1", number: int = 1, attempt_id: str = "a0",
           extra: tuple[str, ...] = ()) -> Attempt:
    """An attempt whose write tasks wrote the manifest's files (and ``extra`` ones) into its write location."""
    attempt = Attempt(store, partition, number, attempt_id)
    attempt.prepare()
    fs, folder = store.fs, attempt.write_uri[len(store.uri_prefix):]
    for relative in [f["path"] for f in MANIFEST["files"]] + list(extra):
        fs.create_dir(f"{folder}/{os.path.dirname(relative)}".rstrip("/"), recursive=True)
        with fs.open_output_stream(f"{folder}/{relative}") as out:
            out.write(relative.encode())
    return attempt


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ 1. durable before it is visible

def test_commit_fsyncs_every_listed_file_and_the_directories_around_the_rename(tmp_path, monkeypatch):
    """A power cut cannot be simulated in a test: record what is fsynced, and in which order with the rename.

    Without the fsyncs a host crash after the rename can leave ``_SUCCESS`` listing truncated files.
    """
    store = Store(str(tmp_path / "out"))
    attempt = staged(store)
    staging = attempt.write_uri
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(src)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    assert attempt.commit(MANIFEST) is True

    assert ("rename", staging) in events
    cut = events.index(("rename", staging))
    before = {path for kind, path in events[:cut] if kind == "fsync"}
    after = {path for kind, path in events[cut + 1:] if kind == "fsync"}
    for entry in MANIFEST["files"]:
        assert f"{staging}/{entry['path']}" in before, entry
    assert {f"{staging}/_SUCCESS", f"{staging}/_rejected", staging, os.path.dirname(staging)} <= before
    assert str(tmp_path / "out" / "date=1") in before  # the new partition directory itself is durable
    assert {str(tmp_path / "out" / "date=1"), os.path.dirname(staging)} <= after  # the rename is durable


# ------------------------------------------------------------------ 2. only listed files are published

def test_local_commit_publishes_only_the_files_the_manifest_lists(tmp_path):
    store = Store(str(tmp_path / "out"))
    attempt = staged(store, extra=("part-7-killed-task.parquet", "_rejected/part-7-killed-task.parquet"))
    assert attempt.commit(MANIFEST) is True
    final = tmp_path / "out" / "date=1" / "v1"
    assert files_under(final) == ["_SUCCESS", "_rejected/part-0.parquet", "part-0.parquet", "part-1.parquet"]


def test_object_store_commit_deletes_unlisted_files_before_the_manifest(tmp_path):
    store = Store("mock:///bucket/out")  # pyarrow's in-memory filesystem: the object-store code path
    assert not store.local
    attempt = staged(store, extra=("part-7-killed-task.parquet",))
    assert attempt.commit(MANIFEST) is True
    listed = store.fs.get_file_info(pafs.FileSelector(store.path("date=1", "v1"), recursive=True))
    names = sorted(i.path.split("/v1/", 1)[1] for i in listed if i.type == pafs.FileType.File)
    assert names == ["_SUCCESS", "_rejected/part-0.parquet", "part-0.parquet", "part-1.parquet"]


# ------------------------------------------------------------------ 3. a failed rename is not "committed"

def test_a_second_attempt_on_a_committed_version_reports_it_committed(tmp_path):
    store = Store(str(tmp_path / "out"))
    first, second = staged(store, attempt_id="a0"), Attempt(store, "date=1", 1, "a1")
    Path(second.write_uri).mkdir(parents=True)
    (Path(second.write_uri) / "part-0.parquet").write_bytes(b"x")
    assert first.commit(MANIFEST) is True
    assert second.commit(MANIFEST) is False  # the one legitimate "committed by another instance"


def test_existing_version_dir_without_manifest_fails_loudly_naming_it(tmp_path):
    store = Store(str(tmp_path / "out"))
    final = tmp_path / "out" / "date=1" / "v1"
    final.mkdir(parents=True)
    (final / "part-0.parquet").write_bytes(b"old rows")  # its _SUCCESS was deleted by an operator
    with pytest.raises(CommitFailed, match=f"{final} exists without a valid _SUCCESS"):
        Attempt(store, "date=1", 1, "a0").prepare()  # before any scoring work
    assert committed_versions(store, "date=1") == []


def test_version_dir_appearing_during_the_attempt_fails_the_commit_with_errno_and_paths(tmp_path):
    store = Store(str(tmp_path / "out"))
    attempt = staged(store)
    final = tmp_path / "out" / "date=1" / "v1"
    final.mkdir(parents=True)
    (final / "stray").write_bytes(b"x")
    with pytest.raises(CommitFailed) as err:
        attempt.commit(MANIFEST)
    message = str(err.value)
    assert "ENOTEMPTY" in message or "EEXIST" in message
    assert attempt.write_uri in message and str(final) in message and "without a valid _SUCCESS" in message
    assert committed_outputs(str(tmp_path / "out")) == {}


def test_version_path_that_is_a_file_fails_the_commit(tmp_path):
    store = Store(str(tmp_path / "out"))
    attempt = staged(store)
    (tmp_path / "out" / "date=1").mkdir(parents=True)
    (tmp_path / "out" / "date=1" / "v1").write_bytes(b"not a directory")
    with pytest.raises(CommitFailed, match="ENOTDIR"):
        attempt.commit(MANIFEST)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_denied_on_the_partition_dir_fails_the_commit(tmp_path):
    store = Store(str(tmp_path / "out"))
    attempt = staged(store)
    partition = tmp_path / "out" / "date=1"
    partition.mkdir(parents=True)
    partition.chmod(0o555)
    try:
        with pytest.raises(CommitFailed, match="EACCES"):
            attempt.commit(MANIFEST)
    finally:
        partition.chmod(0o755)


def test_corrupt_manifest_does_not_count_as_committed(tmp_path):
    store = Store(str(tmp_path / "out"))
    final = tmp_path / "out" / "date=1" / "v1"
    final.mkdir(parents=True)
    (final / "_SUCCESS").write_text("[]")  # valid JSON, not a manifest
    assert committed_versions(store, "date=1") == []
    with pytest.raises(CommitFailed):
        Attempt(store, "date=1", 1, "a0").prepare()


# ------------------------------------------------------------------ 5. partition keys are injective

def test_partition_key_is_injective_and_file_name_safe():
    names = ["a/b", "a__b", "a_/b", "a/_b", "a___b", "a%2Fb", "a%b", "a%25b", "a/b/c", "a__b/c", "a/b__c",
             "date=2026-11-25", "y=2026/m=11", "y=2026__m=11", "_a", "a_"]
    keys = [partition_key(n) for n in names]
    assert len(set(keys)) == len(names), dict(zip(names, keys))
    assert all("/" not in k and k not in ("", ".", "..") for k in keys)
    assert partition_key("date=2026-11-25") == "date=2026-11-25"  # single-level names keep their key
    assert partition_key("y=2026/m=11") == "y=2026%2Fm=11"


def test_partitions_with_colliding_old_keys_keep_separate_ledgers(tmp_path):
    store = Store(str(tmp_path / "out"))
    for partition in ("a/b", "a__b"):
        attempt = staged(store, partition=partition)
        assert attempt.commit(MANIFEST) is True
        [version] = committed_versions(store, partition)
        assert Ledger(store).repair([version]) == 1
    assert [e["partition"] for e in Ledger(store).entries()] == ["a/b", "a__b"]


def test_ledger_records_under_the_old_key_scheme_count_once_after_repair(tmp_path):
    """Upgrading: ``y=1/m=2`` was recorded under ``_ledger/y=1__m=2/``; the next run repairs it under the new key."""
    store = Store(str(tmp_path / "out"))
    attempt = staged(store, partition="y=1/m=2")
    assert attempt.commit(MANIFEST) is True
    store.write_json({"partition": "y=1/m=2", "output_version": 1, "rows_in": 4}, "_ledger", "y=1__m=2", "v1.json")
    assert Ledger(store).repair(committed_versions(store, "y=1/m=2")) == 1  # not found under the new key
    [entry] = Ledger(store).entries()
    assert entry["rows_in"] == 4 and not entry.get("repaired")  # the original record, once
