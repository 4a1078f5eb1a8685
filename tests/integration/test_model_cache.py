"""Model references against a real MLflow sqlite store: run versions and the content-addressed download cache.

No Ray: these share the session's sqlite store (its schema takes seconds to create) with the other integration tests.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from jobs.common.registry import ResolvedModel, cache_key, materialize_model, resolve_model_ref
from jobs.common.tracking import TrackingTarget
from model_files import write_model_files


@pytest.fixture(scope="module")
def store(mlflow_uri, tmp_path_factory):
    import mlflow

    # Jobs run by earlier test modules set the process-wide URIs to their own (since stopped) servers.
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    root = tmp_path_factory.mktemp("registry-artifacts")
    experiment_id = mlflow.create_experiment("registry-tests", artifact_location=str(root))
    return {"uri": mlflow_uri, "experiment_id": experiment_id,
            "target": TrackingTarget(tracking_uri=mlflow_uri, experiment_id=experiment_id, registry_uri=mlflow_uri)}


def _logged_run(store, tmp_path: Path, weights: bytes = b"weights-1", with_model: bool = True) -> str:
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    source = tmp_path / f"src-{time.monotonic_ns()}"
    if with_model:
        write_model_files(source, weights)
    else:
        (source / "artifacts").mkdir(parents=True)
        (source / "MLmodel").write_text("flavors: {}\n")
    with mlflow.start_run(experiment_id=store["experiment_id"]) as run:
        mlflow.log_artifacts(str(source), artifact_path="model")
    return run.info.run_id


def _artifacts_of(store, run_id: str) -> Path:
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://"))


def _entries(cache: Path) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    return [n for n in names if not n.startswith(".tmp-")], [n for n in names if n.startswith(".tmp-")]


def test_runs_references_are_versioned_by_their_run(store, tmp_path):
    one, two = _logged_run(store, tmp_path), _logged_run(store, tmp_path)
    a, b = resolve_model_ref(f"runs:/{one}/model", store["target"]), resolve_model_ref(two, store["target"])
    assert (a.version, a.run_id, a.load_uri) == (one, one, f"runs:/{one}/model")
    assert b.version == two != a.version and not a.registered


def test_registered_versions_keep_their_number_and_record_their_source(store, tmp_path):
    import mlflow

    run_id = _logged_run(store, tmp_path)
    version = mlflow.register_model(f"runs:/{run_id}/model", "registry-test-model")
    resolved = resolve_model_ref("models:/registry-test-model/1", store["target"])
    assert resolved.version == str(version.version) == "1" and resolved.registered
    assert resolved.source == version.source and resolved.run_id == run_id


def test_two_materializations_reuse_one_complete_copy(store, tmp_path):
    cache = tmp_path / "cache"
    resolved = resolve_model_ref(_logged_run(store, tmp_path), store["target"])
    first = materialize_model(resolved, store["uri"], cache_dir=cache)
    assert first.parent.parent.parent == cache / cache_key(resolved) and (first / "config.json").is_file()
    shutil.rmtree(_artifacts_of(store, resolved.run_id))  # a second download would now fail
    second = materialize_model(resolved, store["uri"], cache_dir=cache)
    assert second == first and (second / "model.safetensors").read_bytes() == b"weights-1"
    assert _entries(cache) == ([cache_key(resolved)], [])


def test_concurrent_materializations_end_with_one_copy_and_no_temporaries(store, tmp_path):
    cache = tmp_path / "cache"
    resolved = resolve_model_ref(_logged_run(store, tmp_path), store["target"])
    results: list[Path | BaseException] = []

    def materialize():
        try:
            results.append(materialize_model(resolved, store["uri"], cache_dir=cache))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=materialize) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and isinstance(results[0], Path), results
    assert _entries(cache) == ([cache_key(resolved)], [])


def test_a_leftover_half_download_is_never_used_and_old_ones_are_removed(store, tmp_path):
    cache = tmp_path / "cache"
    resolved = resolve_model_ref(_logged_run(store, tmp_path), store["target"])
    for name, age_s in ((".tmp-recent", 0), (".tmp-dead", 3 * 24 * 3600)):
        leftover = write_model_files(cache / name / "model", weights=b"half")
        (cache / name / "cached.json").write_text(json.dumps({"model_dir": "model/artifacts/hf_model"}))
        old = time.time() - age_s
        os.utime(cache / name, (old, old))
        assert leftover.is_dir()
    model_dir = materialize_model(resolved, store["uri"], cache_dir=cache)
    assert (model_dir / "model.safetensors").read_bytes() == b"weights-1"
    assert ".tmp-" not in str(model_dir.relative_to(cache))
    assert _entries(cache) == ([cache_key(resolved)], [".tmp-recent"])  # a live download may still own it


def test_a_damaged_cached_copy_is_downloaded_again(store, tmp_path):
    cache = tmp_path / "cache"
    resolved = resolve_model_ref(_logged_run(store, tmp_path), store["target"])
    model_dir = materialize_model(resolved, store["uri"], cache_dir=cache)
    (model_dir / "config.json").unlink()  # e.g. a cleaner removed files
    again = materialize_model(resolved, store["uri"], cache_dir=cache)
    assert again == model_dir and (again / "config.json").is_file()
    assert _entries(cache) == ([cache_key(resolved)], [])


def test_a_failed_download_leaves_no_temporaries(store, tmp_path):
    cache = tmp_path / "cache"
    resolved = resolve_model_ref(_logged_run(store, tmp_path, with_model=False), store["target"])
    with pytest.raises(FileNotFoundError, match="no model directory"):
        materialize_model(resolved, store["uri"], cache_dir=cache)
    assert _entries(cache) == ([], [])
    missing = ResolvedModel(load_uri="runs:/0123456789abcdef0123456789abcdef/model", name="x", version="x",
                            run_id="0123456789abcdef0123456789abcdef")
    with pytest.raises(Exception):
        materialize_model(missing, store["uri"], cache_dir=cache)
    assert _entries(cache) == ([], [])


def test_finetune_refuses_a_max_length_beyond_the_models_positions_before_any_compute(
        tiny_corpus: Path, tiny_model_dir: Path, store, monkeypatch):
    import sys

    from jobs.common.config import ConfigError, load
    from jobs.train.classifier import FinetuneConfig, prepare

    monkeypatch.setitem(sys.modules, "ray.data", None)  # refused before any Ray Data work is even set up
    config = load(FinetuneConfig, None, [f"data.{split}={tiny_corpus / f'{split}.parquet'}" for split in
                                         ("train", "val", "test")] +
                  [f"model.name_or_path={tiny_model_dir}", "data.max_length=1024", "baselines=false"])
    with pytest.raises(ConfigError, match=r"data\.max_length: 1024 exceeds the model's position limit, 512 tokens"):
        prepare(config, store["target"])
