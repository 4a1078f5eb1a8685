"""complete_persisted: a checkpoint Ray recorded with a file missing or cut short is completed, marker last."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from jobs.train import checkpoint as checkpoint_lib
from jobs.train.checkpoint import COMPLETE_MARKER, STATE_FILE, complete_persisted


def local_checkpoint(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / STATE_FILE).write_bytes(b"s" * 1000)
    (root / "model" / "config.json").write_text('{"hidden": 32}')
    (root / COMPLETE_MARKER).write_text("{}")
    return root


def test_missing_and_short_files_are_uploaded_again_marker_last(tmp_path, monkeypatch):
    local = local_checkpoint(tmp_path / "local")
    persisted = tmp_path / "storage" / "epoch-0000-step-0000012"
    (persisted / "model").mkdir(parents=True)
    (persisted / "model" / "config.json").write_text('{"hid')  # cut short
    (persisted / COMPLETE_MARKER).write_text("{}")  # the marker made it, the state did not (as seen on S3)
    order: list[str] = []
    real = checkpoint_lib._upload
    monkeypatch.setattr(checkpoint_lib, "_upload",
                        lambda source, fs, target: (order.append(target), real(source, fs, target)))

    redone = complete_persisted(local, pafs.LocalFileSystem(), str(persisted))

    assert sorted(redone) == sorted([STATE_FILE, "model/config.json"])
    assert (persisted / STATE_FILE).read_bytes() == b"s" * 1000
    assert (persisted / "model" / "config.json").read_text() == '{"hidden": 32}'
    assert complete_persisted(local, pafs.LocalFileSystem(), str(persisted)) == []  # nothing left to do


def test_the_marker_is_uploaded_after_everything_else(tmp_path, monkeypatch):
    local = local_checkpoint(tmp_path / "local")
    persisted = tmp_path / "storage" / "epoch-0001"
    order: list[str] = []
    real = checkpoint_lib._upload
    monkeypatch.setattr(checkpoint_lib, "_upload",
                        lambda source, fs, target: (order.append(target), real(source, fs, target)))
    complete_persisted(local, pafs.LocalFileSystem(), str(persisted))
    assert Path(order[-1]).name == COMPLETE_MARKER and len(order) == 3


def test_a_file_that_cannot_be_persisted_fails_the_worker(tmp_path, monkeypatch):
    local = local_checkpoint(tmp_path / "local")
    persisted = tmp_path / "storage" / "epoch-0002"
    monkeypatch.setattr(checkpoint_lib, "_upload", lambda source, fs, target: None)  # writes nothing, says nothing
    with pytest.raises(OSError, match="could not be persisted in full"):
        complete_persisted(local, pafs.LocalFileSystem(), str(persisted))
