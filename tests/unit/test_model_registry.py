"""Model references without a tracking store: local directories' versions, the cache: its location, its publish,
its confinement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.common.registry import (CACHE_ENV, ResolvedModel, cache_key, materialize_model, model_cache_dir,
                                  publish_cached, resolve_model_ref)
from model_files import write_model_files


def test_local_directories_are_versioned_by_their_files(tmp_path):
    first = write_model_files(tmp_path / "a" / "model")
    second = write_model_files(tmp_path / "b" / "model", b"weights-2")
    v1 = resolve_model_ref(str(first), None)
    assert v1.version.startswith("local-") and v1.version == resolve_model_ref(str(first), None).version
    assert resolve_model_ref(str(second), None).version != v1.version  # same name, different weights
    (first / "artifacts" / "hf_model" / "model.safetensors").write_bytes(b"weights-1 retrained")
    assert resolve_model_ref(str(first), None).version not in (v1.version, "local")
    assert not v1.registered


def test_the_default_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "text-jobs" / "models"


def test_the_loser_of_a_race_uses_the_winners_copy(tmp_path):
    cache = tmp_path / "cache"
    staged = []
    for name in ("a", "b"):
        staging = write_model_files(cache / f".tmp-{name}", weights=name.encode())
        (staging / "cached.json").write_text(json.dumps({"model_dir": "artifacts/hf_model"}))
        staged.append(staging)
    winner = publish_cached(staged[0], cache / "key")
    assert publish_cached(staged[1], cache / "key") == winner
    assert (winner / "model.safetensors").read_bytes() == b"a"  # never replaced under a reader


def test_a_local_directory_is_used_in_place(tmp_path):
    model_dir = write_model_files(tmp_path / "m") / "artifacts" / "hf_model"
    assert materialize_model(resolve_model_ref(str(model_dir), None), None, cache_dir=tmp_path / "cache") == \
        model_dir.resolve()
    assert not (tmp_path / "cache").exists()


def _outside_model(tmp_path) -> Path:
    """A complete model directory outside the cache: what a tampered pointer would make a job load."""
    return write_model_files(tmp_path / "elsewhere", weights=b"not-the-download") / "artifacts" / "hf_model"


def _pointer(entry: Path, model_dir: str) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "cached.json").write_text(json.dumps({"model_dir": model_dir}))


@pytest.mark.parametrize("tamper", ["absolute", "dotdot", "symlink_inside", "entry_is_a_symlink"])
def test_a_pointer_that_leads_out_of_its_cache_entry_is_not_cached_and_the_model_is_downloaded_again(tmp_path,
                                                                                                    tamper):
    source = write_model_files(tmp_path / "logged")  # what the reference downloads (a file:// artifact URI)
    resolved = ResolvedModel(load_uri=source.as_uri(), name="m", version="1", run_id="r", source="s")
    cache = tmp_path / "cache"
    entry = cache / cache_key(resolved)
    outside = _outside_model(tmp_path)
    if tamper == "absolute":
        _pointer(entry, str(outside))
    elif tamper == "dotdot":
        _pointer(entry, os.path.relpath(outside, entry))
    elif tamper == "symlink_inside":
        _pointer(entry, "artifacts/hf_model")
        (entry / "artifacts").mkdir()
        (entry / "artifacts" / "hf_model").symlink_to(outside, target_is_directory=True)
    else:
        _pointer(tmp_path / "other-entry", "artifacts/hf_model")
        (tmp_path / "other-entry" / "artifacts").symlink_to(outside.parent, target_is_directory=True)
        cache.mkdir()
        entry.symlink_to(tmp_path / "other-entry", target_is_directory=True)
    model_dir = materialize_model(resolved, None, cache_dir=cache)
    assert model_dir.resolve().is_relative_to(entry.resolve()) and not entry.is_symlink()
    assert (model_dir / "model.safetensors").read_bytes() == b"weights-1"  # the download, not the tampered path
    assert (outside / "model.safetensors").read_bytes() == b"not-the-download"  # what it led to is left alone
    assert materialize_model(resolved, None, cache_dir=cache) == model_dir  # now cached, as written


def test_a_pointer_inside_its_entry_is_used_without_a_download(tmp_path):
    resolved = ResolvedModel(load_uri="models:/never-downloaded/1", name="m", version="1", run_id="r")
    entry = tmp_path / "cache" / cache_key(resolved)
    write_model_files(entry)
    _pointer(entry, "artifacts/hf_model")
    assert materialize_model(resolved, None, cache_dir=tmp_path / "cache") == entry / "artifacts" / "hf_model"
