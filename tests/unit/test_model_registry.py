"""Model references without a tracking store: local directories' versions, the cache's location and its publish."""

from __future__ import annotations

import json

from jobs.common.registry import CACHE_ENV, materialize_model, model_cache_dir, publish_cached, resolve_model_ref
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
