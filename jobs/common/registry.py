"""Log trained models to MLflow as pyfunc models, register them, and resolve model references.

The logged format is a pyfunc over the Hugging Face directory (safetensors weights, config,
tokenizer) rather than ``mlflow.pytorch``'s default ``pt2`` export, which bakes the example's
sequence length into the graph.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd

from jobs.common.tracking import TrackingTarget, client_for

MODEL_ARTIFACT = "hf_model"


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame with a 'text' column) -> DataFrame(label, label_name, probability)``.

    A model fine-tuned on sentence pairs reads the second text from a ``text_pair`` column.
    """

    def load_context(self, context) -> None:
        from model.classifier import load_classifier

        self.loaded = load_classifier(context.artifacts[MODEL_ARTIFACT])
        self.loaded.model.eval()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from model.classifier import classify_texts

        texts = list(model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input)
        pairs = None
        if isinstance(model_input, pd.DataFrame) and "text_pair" in model_input.columns:
            pairs = ["" if p is None else str(p) for p in model_input["text_pair"]]
        labels, probs = classify_texts(self.loaded, [str(t) for t in texts], text_pairs=pairs)
        names = self.loaded.label_names
        return pd.DataFrame({"label": labels, "label_name": [names[i] for i in labels], "probability": probs})


def project_requirements() -> list[str]:
    # Explicit requirements skip MLflow's slow dependency inference (8.5 s -> 0.1 s).
    import torch
    import transformers

    return [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
            f"mlflow=={mlflow.__version__}", "pandas"]


@dataclass(frozen=True)
class RegisteredModel:
    name: str | None
    version: str | None
    alias: str | None
    model_uri: str


def log_and_register(target: TrackingTarget, run_id: str, python_model: mlflow.pyfunc.PythonModel,
                     model_dir: Path, registered_name: str | None, alias: str | None,
                     input_example: pd.DataFrame | None = None) -> RegisteredModel:
    """Log ``model_dir`` as the run's model; register it and point ``alias`` at the new version."""
    mlflow.set_tracking_uri(target.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=python_model,
                                       artifacts={MODEL_ARTIFACT: str(model_dir)},
                                       pip_requirements=project_requirements(), input_example=input_example)
    if not registered_name:
        return RegisteredModel(None, None, None, info.model_uri)
    version = mlflow.register_model(info.model_uri, registered_name)
    if alias:
        client_for(target).set_registered_model_alias(registered_name, alias, version.version)
    return RegisteredModel(registered_name, str(version.version), alias,
                           f"models:/{registered_name}/{version.version}")


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference made concrete: where to load it and the lineage written beside each prediction."""
    load_uri: str  # a local directory, or a models:/name/version or runs:/ URI to download
    name: str
    version: str
    run_id: str


def resolve_model_ref(ref: str, target: TrackingTarget | None) -> ResolvedModel:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/model``, a run id, or a local directory."""
    if os.path.isdir(ref):
        return ResolvedModel(load_uri=str(Path(ref).resolve()), name=Path(ref).name, version="local", run_id="")
    if target is None:
        raise ValueError(f"model reference {ref!r} needs an MLflow tracking store")
    client = client_for(target)
    if ref.startswith("models:/"):
        body = ref[len("models:/"):]
        if "@" in body:
            name, alias = body.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = body.rsplit("/", 1)
            version = client.get_model_version(name, number)
        return ResolvedModel(load_uri=f"models:/{name}/{version.version}", name=name,
                             version=str(version.version), run_id=version.run_id or "")
    run_id = ref[len("runs:/"):].split("/", 1)[0] if ref.startswith("runs:/") else ref
    run = client.get_run(run_id)  # raises a clear MLflow error when the run does not exist
    return ResolvedModel(load_uri=f"runs:/{run.info.run_id}/model", name=run.info.run_name or run_id,
                         version="run", run_id=run.info.run_id)


def materialize_model(resolved: ResolvedModel, tracking_uri: str | None) -> Path:
    """A local model directory (Hugging Face or seq2seq export): the directory itself, or a fresh download.

    ``models:/name/1`` and ``runs:/id/model`` carry no ``://``, so the test is "is it a local
    directory", not "does it look like a URL".
    """
    if os.path.isdir(resolved.load_uri):
        return Path(resolved.load_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved.load_uri,
                                                     dst_path=tempfile.mkdtemp(prefix="model-")))
    model_dir = local / _artifact_path(local)
    if model_kind(model_dir) is None:
        raise FileNotFoundError(f"{resolved.load_uri}: no model directory at {model_dir}")
    return model_dir


def _artifact_path(model_dir: Path) -> str:
    """Where the pyfunc's model directory lies inside a downloaded MLflow model.

    MLflow keeps an artifact under its source directory's own name (``artifacts/<basename>``),
    which the MLmodel file records; the key name (``hf_model``) is only the fallback.
    """
    import yaml

    try:
        spec = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
        return spec["flavors"]["python_function"]["artifacts"][MODEL_ARTIFACT]["path"]
    except (OSError, KeyError, TypeError):
        return os.path.join("artifacts", MODEL_ARTIFACT)


ModelKind = Literal["classifier", "seq2seq"]


def model_kind(model_dir: str | Path) -> ModelKind | None:
    """What a local model directory holds: a seq2seq export, a Hugging Face classifier, or neither."""
    from model.seq2seq_io import CONFIG_FILE as SEQ2SEQ_CONFIG

    model_dir = Path(model_dir)
    if (model_dir / SEQ2SEQ_CONFIG).is_file():
        return "seq2seq"
    if (model_dir / "config.json").is_file():
        return "classifier"
    return None
