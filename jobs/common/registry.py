"""Log trained models to MLflow as pyfunc models, register them, and resolve model references.

The logged format is a pyfunc over the Hugging Face directory (safetensors weights, config,
tokenizer) rather than ``mlflow.pytorch``'s default ``pt2`` export, which bakes the example's
sequence length into the graph.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd

from data_pipeline.text_limits import cut_texts, max_chars
from jobs.common.config import ConfigError
from jobs.common.tracking import TrackingTarget, client_for, filter_literal
from jobs.common.durable import fsync_dir, sync_tree

MODEL_ARTIFACT = "hf_model"
CACHE_ENV = "TEXT_JOBS_CACHE"  # the cache root; models are kept under <root>/models
_CACHE_TMP_PREFIX = ".tmp-"  # a download in progress (or abandoned): never read as a cached model
_CACHE_POINTER = "cached.json"  # written last into a staged copy: where its model directory lies
CLASSIFY_MAX_LENGTH = 128  # tokens the pyfunc keeps of each text (the jobs' default max_length)
_STALE_TMP_S = 24 * 3600  # a temporary this old belongs to a download that died
SOURCE_CHECKPOINT_TAG = "source_checkpoint"  # on a logged model and its version: the checkpoint exported


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame with a 'text' column) -> DataFrame(label, label_name, probability)``.

    A model fine-tuned on sentence pairs reads the second text from a ``text_pair`` column.
    """

    def load_context(self, context) -> None:
        from model.classifier import load_classifier

        self.loaded = load_classifier(context.artifacts[MODEL_ARTIFACT])
        self.loaded.model.eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from model.classifier import classify_texts

        texts = list(model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input)
        pairs = None
        if isinstance(model_input, pd.DataFrame) and "text_pair" in model_input.columns:
            pairs = ["" if p is None else str(p) for p in model_input["text_pair"]]
        # Cut before tokenizing, as the scoring pipeline does: a multi-megabyte row costs what a long review costs.
        limit = max_chars(CLASSIFY_MAX_LENGTH)
        texts, _ = cut_texts([str(t) for t in texts], limit)
        if pairs is not None:
            pairs, _ = cut_texts(pairs, limit)
        labels, probs = classify_texts(self.loaded, texts, max_length=CLASSIFY_MAX_LENGTH, text_pairs=pairs)
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


def classifier_signature(pair: bool):
    """``text`` (and ``text_pair`` for a sentence-pair model; optional) -> ``label, label_name, probability``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = [ColSpec(DataType.string, "text")] + ([ColSpec(DataType.string, "text_pair", required=False)]
                                                   if pair else [])
    outputs = [ColSpec(DataType.long, "label"), ColSpec(DataType.string, "label_name"),
               ColSpec(DataType.double, "probability")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def seq2seq_signature():
    """``source`` -> ``target``, with the optional params ``beam_size`` (1: greedy) and ``max_len`` (0: the model's)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "source")]),
                          outputs=Schema([ColSpec(DataType.string, "target")]),
                          params=ParamSchema([ParamSpec("beam_size", DataType.long, 1),
                                              ParamSpec("max_len", DataType.long, 0)]))


def log_pyfunc(target: TrackingTarget, run_id: str, python_model: mlflow.pyfunc.PythonModel, model_dir: Path,
               input_example: pd.DataFrame | None = None, signature=None, step: int = 0,
               tags: dict[str, str] | None = None, client=None):
    """Log ``model_dir`` as the run's pyfunc ``model`` without the fluent API's active run (nothing to end).

    The logged model is created here, in the run's experiment: without an active run MLflow would put
    it in the default experiment. It carries the run's params, as ``mlflow.pyfunc.log_model`` does.
    """
    from mlflow.models import Model

    client = client or client_for(target)
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id, tags=tags,
                                       params={k: str(v) for k, v in run.data.params.items()})
    with _tracking_uri(target):
        return Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
                         model_id=model.model_id, python_model=python_model,
                         artifacts={MODEL_ARTIFACT: str(model_dir)}, pip_requirements=project_requirements(),
                         input_example=input_example, signature=signature, step=step)


class _tracking_uri:
    """``Model.log`` and ``register_model`` use the global tracking and registry URIs: ``target``'s for the call."""

    def __init__(self, target: TrackingTarget):
        self.tracking, self.registry = target.tracking_uri, target.registry_uri

    def __enter__(self):
        self.previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(self.tracking)
        mlflow.set_registry_uri(self.registry)

    def __exit__(self, *exc):
        mlflow.set_tracking_uri(self.previous[0])
        mlflow.set_registry_uri(self.previous[1])


def find_logged_model(client, experiment_id: str, run_id: str, checkpoint: str):
    """The run's READY pyfunc ``model`` logged from ``checkpoint`` by an earlier attempt, or None."""
    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id='{run_id}'"):
        if model.name == "model" and model.tags.get(SOURCE_CHECKPOINT_TAG) == checkpoint \
                and str(model.status).endswith("READY"):
            return model
    return None


def find_registered_version(client, registered_name: str, run_id: str, checkpoint: str):
    """The version of ``registered_name`` that this run registered from ``checkpoint``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = {filter_literal(registered_name, 'registered model name')}"
                                                f" and run_id = '{run_id}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    found = [v for v in versions if (v.tags or {}).get(SOURCE_CHECKPOINT_TAG) == checkpoint]
    return min(found, key=lambda v: int(v.version)) if found else None


def register_version(target: TrackingTarget, model_uri: str, registered_name: str, alias: str | None,
                     version_tags: dict[str, str] | None = None, client=None) -> RegisteredModel:
    """Register ``model_uri`` as a new version of ``registered_name`` and point ``alias`` at it."""
    with _tracking_uri(target):  # creates the registered model when it does not exist
        version = mlflow.register_model(model_uri, registered_name, tags=version_tags or None)
    if alias:
        (client or client_for(target)).set_registered_model_alias(registered_name, alias, version.version)
    return RegisteredModel(registered_name, str(version.version), alias,
                           f"models:/{registered_name}/{version.version}")


def describe_version(client, registered: RegisteredModel, card: str, model_description: str) -> None:
    """The version's model card as its description; the registered model's paragraph if it has none yet.

    The MLflow UI shows both on the registry pages. A registered model's description that someone
    wrote in the UI is kept: only an empty one is filled.
    """
    if not registered.name or registered.version is None:
        return
    client.update_model_version(registered.name, registered.version, description=card)
    if model_description and not (client.get_registered_model(registered.name).description or "").strip():
        client.update_registered_model(registered.name, description=model_description)


def log_and_register(target: TrackingTarget, run_id: str, python_model: mlflow.pyfunc.PythonModel,
                     model_dir: Path, registered_name: str | None, alias: str | None,
                     input_example: pd.DataFrame | None = None, signature=None,
                     version_tags: dict[str, str] | None = None, step: int = 0) -> RegisteredModel:
    """Log ``model_dir`` as the run's model; register it and point ``alias`` at the new version.

    With ``signature`` given, MLflow does not run the model to infer one (it still loads it once to
    check the example serves). ``step``: the run's metrics at that step are attached to the logged model.
    ``version_tags`` go on the new version (data digests, headline metrics, baselines). Training runs
    go through ``jobs.train.run_tracking`` instead, which retries each step and registers a checkpoint once.
    """
    info = log_pyfunc(target, run_id, python_model, model_dir, input_example, signature, step)
    if not registered_name:
        return RegisteredModel(None, None, None, info.model_uri)
    return register_version(target, info.model_uri, registered_name, alias, version_tags)


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference made concrete: where to load it and the lineage written beside each prediction.

    ``version`` tells models apart in the lineage columns and in "already scored by this model": the
    registered version number, the run id of a ``runs:/`` reference, or a digest of a local directory's files.
    """
    load_uri: str  # a local directory, or a models:/name/version or runs:/ URI to download
    name: str
    version: str
    run_id: str
    source: str = ""  # what the download holds (a registered version's source); keys the download cache

    @property
    def registered(self) -> bool:
        """A version of a registered model (tags and aliases apply), not a run or a directory."""
        return self.load_uri.startswith("models:/")


def resolve_model_ref(ref: str, target: TrackingTarget | None) -> ResolvedModel:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/model``, a run id, or a local
    directory."""
    if os.path.isdir(ref):
        path = Path(ref).resolve()
        return ResolvedModel(load_uri=str(path), name=path.name, version=f"local-{directory_digest(path)[:16]}",
                             run_id="")
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
                             version=str(version.version), run_id=version.run_id or "", source=version.source or "")
    run_id, _, artifact = (ref[len("runs:/"):] if ref.startswith("runs:/") else ref).partition("/")
    artifact = artifact.strip("/") or "model"
    run = client.get_run(run_id)  # raises a clear MLflow error when the run does not exist
    # The run id is the version: two runs' models are two models, whatever the runs are called.
    version = run.info.run_id if artifact == "model" else f"{run.info.run_id}/{artifact}"
    return ResolvedModel(load_uri=f"runs:/{run.info.run_id}/{artifact}", name=run.info.run_name or run_id,
                         version=version, run_id=run.info.run_id)


def directory_digest(path: str | Path) -> str:
    """sha256 over a directory's file names and contents: a local model's version (weights, config, vocab)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def model_cache_dir() -> Path:
    """Where downloaded models are kept: ``$TEXT_JOBS_CACHE/models``, else ``~/.cache/text-jobs/models``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "text-jobs")
    return Path(root).expanduser() / "models"


def cache_key(resolved: ResolvedModel) -> str:
    """The content a download holds: a registered version's source (MLflow 3: its logged model id) and
    run, or a run id and artifact path. Not ``models:/name/N``: a re-created registered model reuses N."""
    identity = json.dumps([resolved.source or resolved.load_uri, resolved.run_id])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def materialize_model(resolved: ResolvedModel, tracking_uri: str | None, cache_dir: str | Path | None = None) -> Path:
    """A local model directory (Hugging Face or seq2seq export): the directory itself, or a cached download.

    Downloads land in ``<cache_dir>/<cache_key>``, shared by every job and actor on the node: a copy
    is staged in a temporary directory beside it and renamed into place whole, so two actors racing
    both end with one complete copy, and a download that died half-way is never read.
    ``models:/name/1`` and ``runs:/id/model`` carry no ``://``, so the test is "is it a local
    directory", not "does it look like a URL".
    """
    if os.path.isdir(resolved.load_uri):
        return Path(resolved.load_uri)
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    final = cache / cache_key(resolved)
    cached = _cached_model(final)
    if cached is not None:
        return cached
    if final.exists() or final.is_symlink():  # damaged, or its pointer leads out: set it aside, download again
        _discard(final, cache)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache)
    staging = Path(tempfile.mkdtemp(prefix=_CACHE_TMP_PREFIX, dir=cache))
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved.load_uri, dst_path=str(staging)))
        model_dir = local / _artifact_path(local)
        if model_kind(model_dir) is None:
            raise FileNotFoundError(f"{resolved.load_uri}: no model directory at {_artifact_path(local)}")
        pointer = {"model_dir": model_dir.relative_to(staging).as_posix(), "load_uri": resolved.load_uri,
                   "source": resolved.source, "run_id": resolved.run_id}
        (staging / _CACHE_POINTER).write_text(json.dumps(pointer), encoding="utf-8")
        return publish_cached(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left once published; a failed download's files


def publish_cached(staging: Path, final: Path) -> Path:
    """Rename a complete staged copy to ``final``; when another process got there first, use its copy."""
    sync_tree(str(staging))  # a host crash after the rename must not leave a cached copy with truncated files
    try:
        os.rename(staging, final)
        fsync_dir(str(final.parent))
    except OSError:  # ENOTEMPTY/EEXIST: another actor published first (anything else fails below)
        pass
    cached = _cached_model(final)
    if cached is None:
        raise OSError(f"could not publish the downloaded model to {final}")
    return cached


def _cached_model(final: Path) -> Path | None:
    """The model directory a cache entry's pointer names, or None (not cached: download again).

    The pointer is data on disk that anyone with write access to the cache could have edited: it must
    name a relative path inside the entry, and the entry and that path must stay inside it once
    symlinks are followed, or a job would load a model from elsewhere as if it were the download.
    """
    try:
        relative = json.loads((final / _CACHE_POINTER).read_text(encoding="utf-8"))["model_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(relative, str) or final.is_symlink() or not _inside(final, relative):
        return None
    model_dir = final / relative
    return model_dir if model_kind(model_dir) is not None else None


def _inside(entry: Path, relative: str) -> bool:
    """``relative`` names ``entry`` or a path below it: no absolute path, no ``..``, no symlink out."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        return False
    try:
        return (entry / path).resolve(strict=True).is_relative_to(entry.resolve(strict=True))
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return False


def _discard(path: Path, cache: Path) -> None:
    aside = Path(tempfile.mkdtemp(prefix=_CACHE_TMP_PREFIX, dir=cache))
    try:
        os.rename(path, aside / "old")  # atomic: no reader sees it half-deleted
    except FileNotFoundError:
        pass  # another actor set it aside first
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_temporaries(cache: Path) -> None:
    """Remove downloads that died (a killed actor) long ago; a live one is younger than a day."""
    now = time.time()
    for entry in cache.glob(_CACHE_TMP_PREFIX + "*"):
        try:
            if now - entry.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass  # removed by another actor meanwhile


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


def position_limit(name_or_path: str | Path) -> int | None:
    """The most tokens a Hugging Face model reads in one sequence (``max_position_embeddings``).

    None where the config does not say, and for a seq2seq export (it cuts its sources to its own max_len).
    """
    path = Path(name_or_path)
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    else:  # a hub id: the job reads the tokenizer from the hub (or its cache) anyway
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(name_or_path)).to_dict()
        except (OSError, ValueError):
            return None
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def check_max_length(name_or_path: str | Path, max_length: int, key: str) -> None:
    """Refuse a token budget the model has no positions for: it would fail every batch at the first forward."""
    limit = position_limit(name_or_path)
    if limit is not None and max_length > limit:
        raise ConfigError(f"{key}: {max_length} exceeds the model's position limit, {limit} tokens "
                          f"(max_position_embeddings of {name_or_path})")


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
