"""Training checkpoints: what one holds, how it is written, and how a resume finds a complete one.

A checkpoint directory holds ``train_state.pt`` (model, optimiser, schedule, scaler, counters,
RNG states), ``job_config.json``, the task's exported model under ``model/`` and, written last,
the ``COMPLETE`` marker: a directory without it was cut short and is never resumed from.
"""

from __future__ import annotations

import json
import logging
import posixpath
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, progress: Progress, epoch: int,
                    config_dict: dict[str, Any], export) -> None:
    """Write a complete checkpoint of the state after ``epoch``; ``export(model, dir)`` writes the model."""
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "step": progress.step, "epoch": epoch, "rng": rng_state(), "best": progress.best,
                "stale_epochs": progress.stale_epochs},
               directory / STATE_FILE)
    (directory / "job_config.json").write_text(json.dumps(config_dict, indent=2, default=str))
    export(unwrap(model), directory / EXPORT_DIR)
    (directory / COMPLETE_MARKER).write_text(json.dumps({"step": progress.step, "epoch": epoch}))  # written last


def load_state(directory: Path, device: torch.device | str) -> dict[str, Any] | None:
    """The training state of a checkpoint directory, or None when it is incomplete or unreadable."""
    if not (directory / COMPLETE_MARKER).is_file():
        return None
    try:
        return torch.load(directory / STATE_FILE, map_location=device, weights_only=False)
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
    object stores as on local disks.
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


def checkpoint_dir_name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:04d}-step-{step:07d}"  # sorts by epoch, then step (the fallback relies on it)
