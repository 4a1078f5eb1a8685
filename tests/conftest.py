"""Shared fixtures: one real local Ray per test session, a real MLflow sqlite store, a tiny corpus and model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Downloaded models go to the session's cache, not the user's ~/.cache.

    Set before Ray starts: local workers inherit it.
    """
    root = tmp_path_factory.mktemp("text-jobs-cache")
    os.environ["TEXT_JOBS_CACHE"] = str(root)
    return root / "models"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with the 2 CPUs of a CI machine, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        from jobs.common.ray_runtime import start_local_ray

        start_local_ray(num_cpus=2)  # as the jobs start theirs: immune to other Ray instances here
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def mlflow_uri(session_dir: Path) -> str:
    """A real MLflow sqlite tracking store and registry for the session."""
    uri = f"sqlite:///{session_dir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture(scope="session")
def tiny_corpus(session_dir: Path) -> Path:
    """A deterministic slice of the real review corpus: 60 texts per label, split 80/10/10."""
    from jobs.corpus.prepare import PrepareCorpusConfig, SplitSettings, run

    out = session_dir / "corpus"
    run(PrepareCorpusConfig(split=SplitSettings(limit_per_label=60), output_dir=str(out), log_to_mlflow=False))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(session_dir: Path, tiny_corpus: Path) -> Path:
    """The debug-size BERT (hidden 32, 2 layers) with the real 21,128-token Chinese vocabulary."""
    from model.classifier import build_random_classifier

    labels = json.loads((tiny_corpus / "labels.json").read_text())
    return build_random_classifier(REPO / "configs/model/bert-debug.json", labels, session_dir / "bert-debug")


@pytest.fixture(scope="session")
def tiny_reference(ray_local, mlflow_uri, tiny_corpus: Path, tiny_model_dir: Path, session_dir: Path):
    """An uninterrupted tiny fine-tune (sqlite store): the numbers every faulted run must reproduce."""
    from jobs.common.config import load
    from jobs.finetune_classifier import FinetuneConfig, run
    from tiny_training import TINY, tiny_config

    config = load(FinetuneConfig, TINY, tiny_config(tiny_corpus, tiny_model_dir, session_dir / "ft-ray", "reference"))
    return run(config)
