"""Training checkpoints: what one holds, how it is written, and how a resume finds a complete one.

A checkpoint directory holds ``train_state.pt`` (model, optimiser, schedule, scaler, counters,
RNG states), ``job_config.json``, the task's exported model under ``model/``, the run's metrics
MLflow had not confirmed when it was written (``tracking_pending.json``, see
``jobs.common.metric_buffer``) and, written last, the ``COMPLETE`` marker: a directory without it
was cut short and is never resumed from.

The state file is read with ``torch.load(weights_only=True)``: it holds only tensors and plain
values (RNG states included), so a file planted in shared run storage cannot run code on the
workers that resume from it; one that carries anything else is refused (``UnsafeCheckpointError``).
"""

from __future__ import annotations

import json
import logging
import pickle
import posixpath
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common.metric_buffer import TRACKING_FILE
from jobs.common.redaction import redact_mapping
from jobs.train.distributed import unwrap

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
COMPLETE_MARKER = "COMPLETE"
EXPORT_DIR = "model"


@dataclass
class Progress:
    """Where training stands: counters a checkpoint carries across restarts."""
    step: int = 0  # optimiser steps taken
    next_epoch: int = 0
    best: float | None = None  # best value of the checkpoint metric so far
    stale_epochs: int = 0  # epochs since it last improved


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint's state file holds objects a weights-only load refuses (a possible code payload)."""


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values, so that a weights-only load can read it back."""
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "numpy": {"bit_generator": numpy_state["bit_generator"],
                      "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                      "gauss": float(numpy_state["gauss"])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict[str, Any]) -> None:
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    key = numpy_state["key"].cpu().numpy().astype(np.uint32)
    np.random.set_state({"bit_generator": numpy_state["bit_generator"], "has_gauss": numpy_state["has_gauss"],
                         "state": {"key": key, "pos": numpy_state["pos"]}, "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"].cpu())  # map_location may have moved it; the CPU generator wants a CPU tensor
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, progress: Progress, epoch: int,
                    config_dict: dict[str, Any], export) -> None:
    """Write a complete checkpoint of the state after ``epoch``; ``export(model, dir)`` writes the model."""
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "step": progress.step, "epoch": epoch, "rng": rng_state(), "best": progress.best,
                "stale_epochs": progress.stale_epochs},
               directory / STATE_FILE)
    # redacted: whoever can read the run storage must not learn credentials from a URI in the config
    (directory / "job_config.json").write_text(json.dumps(redact_mapping(config_dict), indent=2, default=str))
    export(unwrap(model), directory / EXPORT_DIR)
    (directory / COMPLETE_MARKER).write_text(json.dumps({"step": progress.step, "epoch": epoch}))  # written last


def load_state(directory: Path, device: torch.device | str) -> dict[str, Any] | None:
    """The training state of a checkpoint directory, or None when it is incomplete or unreadable.

    ``state["tracking"]`` is what the checkpoint carries for MLflow (None in one written before that).

    Raises ``UnsafeCheckpointError`` when the state file holds anything but tensors and plain
    values: a weights-only load refuses it without running it, and it is never skipped quietly.
    """
    if not (directory / COMPLETE_MARKER).is_file():
        return None
    path = directory / STATE_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        tracking = directory / TRACKING_FILE
        state["tracking"] = json.loads(tracking.read_text()) if tracking.is_file() else None
        return state
    except pickle.UnpicklingError:  # weights-only refusal: a foreign object, not a torn file
        try:
            found = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 -- only for the message; the refusal stands either way
            found = ""
        found = found or "none named: the file may be damaged"
        raise UnsafeCheckpointError(
            f"refusing checkpoint state {path}: it holds objects other than tensors and plain values "
            f"({found}), which could run code when loaded; it was not loaded. If this run's storage is "
            "shared, check who wrote it; a checkpoint written before weights-only loading also lands here: "
            "start a new run (another run.name) instead of resuming it") from None
    except (OSError, RuntimeError, EOFError, ValueError):
        return None


def progress_of(state: dict[str, Any]) -> Progress:
    return Progress(step=state["step"], next_epoch=state["epoch"] + 1, best=state.get("best"),
                    stale_epochs=state.get("stale_epochs", 0))


def restore(state: dict[str, Any], model, optimizer, scheduler, scaler) -> Progress:
    """Load a checkpoint's state into the live objects (and the RNGs); returns where it stood."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    return progress_of(state)


def _state_of(checkpoint, device) -> dict[str, Any] | None:
    with checkpoint.as_directory() as directory:  # a download when the storage is remote
        return load_state(Path(directory), device)


def load_latest_valid_state(checkpoint, device) -> dict[str, Any] | None:
    """State of Ray's latest checkpoint; if that one is half-written, the newest complete sibling.

    Siblings are listed through the checkpoint's own filesystem, so the fallback works on
    object stores as on local disks. An unsafe state file (``UnsafeCheckpointError``) is not
    "incomplete": it propagates and fails the run instead of falling back, because someone wrote
    into the run's storage who should not have: an earlier sibling in the same storage is no more
    trustworthy, and resuming from it would quietly discard progress and hide the tampering.
    """
    import pyarrow.fs as pafs
    import ray.train

    state = _state_of(checkpoint, device)
    if state is not None:
        return state
    log.warning("checkpoint %s is incomplete or unreadable; looking for an earlier one", checkpoint.path)
    filesystem, run_dir = checkpoint.filesystem, posixpath.dirname(checkpoint.path.rstrip("/"))
    siblings = [info.path for info in filesystem.get_file_info(pafs.FileSelector(run_dir))
                if info.type == pafs.FileType.Directory and posixpath.basename(info.path).startswith("epoch-")]
    for candidate in sorted(siblings, reverse=True):  # names sort by epoch and step
        if candidate.rstrip("/") != checkpoint.path.rstrip("/"):
            state = _state_of(ray.train.Checkpoint(candidate, filesystem=filesystem), device)
            if state is not None:
                log.warning("resuming from %s instead", candidate)
                return state
    log.warning("no complete checkpoint found: starting from scratch")
    return None


def complete_persisted(local: Path, filesystem, persisted: str, retry: StorageRetry = DEFAULT_RETRY) -> list[str]:
    """Make the persisted copy of checkpoint ``local`` hold every file in full; return the files it re-uploaded.

    Ray Train copies a checkpoint with ``pyarrow.fs.copy_files``, which logs and drops an error of a
    file's final upload ("Error ignored when destroying file"): after a 503 storm a checkpoint can be
    recorded with its state file missing (seen here, with ``COMPLETE`` present). Each missing or short
    file is uploaded again through the retried storage path, ``COMPLETE`` last; one that still cannot be
    written raises, and the worker fails rather than train on behind a checkpoint it does not have.
    """
    storage = Storage(filesystem, retry)
    present = storage.files(persisted)
    wanted = {path.relative_to(local).as_posix(): path for path in sorted(local.rglob("*")) if path.is_file()}
    redo = [name for name, path in wanted.items() if present.get(name) != path.stat().st_size]
    if not redo:
        return []
    log.warning("checkpoint %s was persisted without %s in full; uploading again", persisted, ", ".join(redo))
    for name in sorted(redo, key=lambda n: n == COMPLETE_MARKER):  # the marker last
        target = posixpath.join(persisted, name)
        storage.create_dir(posixpath.dirname(target))
        storage.call(lambda source=wanted[name], target=target: _upload(source, filesystem, target), f"upload {target}")
    missing = [n for n, path in wanted.items() if storage.files(persisted).get(n) != path.stat().st_size]
    if missing:
        raise OSError(f"checkpoint {persisted}: {', '.join(missing)} could not be persisted in full")
    return redo


def _upload(source: Path, filesystem, target: str) -> None:
    """One file, streamed; closing the stream (which finishes the upload) raises on failure, unlike copy_files."""
    import shutil

    with open(source, "rb") as handle, filesystem.open_output_stream(target) as out:
        shutil.copyfileobj(handle, out, 16 << 20)


def checkpoint_dir_name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:04d}-step-{step:07d}"  # sorts by epoch, then step (the fallback relies on it)
