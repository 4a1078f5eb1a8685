"""A logged pyfunc model's files on disk, shared by the model cache and version tests (unit and integration).

Importable as ``model_files`` from any test: ``tests/`` is on sys.path through its conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_model_files(directory: Path, weights: bytes = b"weights-1") -> Path:
    """A logged pyfunc model's layout: MLmodel beside artifacts/hf_model (a Hugging Face directory)."""
    (directory / "artifacts" / "hf_model").mkdir(parents=True)
    (directory / "MLmodel").write_text("flavors: {}\n")
    (directory / "artifacts" / "hf_model" / "config.json").write_text(json.dumps({"max_position_embeddings": 16}))
    (directory / "artifacts" / "hf_model" / "model.safetensors").write_bytes(weights)
    return directory
