"""Checkpoints are read weights-only: a pickle payload in a state file is refused and never runs,
while every state the loop saves (RNG states included) still round-trips. No Ray runs here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.train.checkpoint import (COMPLETE_MARKER, STATE_FILE, Progress, UnsafeCheckpointError, checkpoint_dir_name,
                                   load_latest_valid_state, load_state, restore, restore_rng, save_checkpoint)
from jobs.train.optimizer import build_optimizer
from jobs.train.settings import OptimSettings

CPU = torch.device("cpu")


class Payload:
    """Unpickling it creates ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = build_optimizer(model, OptimSettings(lr=0.01), total_steps=10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _export(model, directory: Path) -> None:
    directory.mkdir()


def _save(directory: Path, step: int = 3, epoch: int = 0, config: dict | None = None) -> None:
    model, optimizer, scheduler = _objects()
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory, model, optimizer, scheduler, None, Progress(step=step, best=0.5), epoch, config or {},
                    _export)


def _plant_payload(directory: Path, marker: Path) -> None:
    """Rewrite the state file as an attacker with write access to the run storage would."""
    state = torch.load(directory / STATE_FILE, weights_only=False)  # the file this test just wrote
    torch.save({**state, "rng": Payload(marker)}, directory / STATE_FILE)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(2).tolist()


def test_a_saved_state_loads_weights_only_and_restores_every_rng(tmp_path: Path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state: it must survive too
    model, optimizer, scheduler = _objects(seed=5)
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    save_checkpoint(tmp_path, model, optimizer, scheduler, None, Progress(step=3, best=0.25), 1, {}, _export)
    expected = _draws()  # the streams right after the save

    state = torch.load(tmp_path / STATE_FILE, weights_only=True)  # the strict load itself accepts the file
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # move every stream elsewhere
    restore_rng(state["rng"])
    assert _draws() == expected

    fresh, fresh_optimizer, fresh_scheduler = _objects(seed=9)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    progress = restore(load_state(tmp_path, CPU), fresh, fresh_optimizer, fresh_scheduler, None)
    assert progress == Progress(step=3, next_epoch=2, best=0.25, stale_epochs=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert _draws() == expected


def test_a_pickle_payload_is_refused_by_name_and_never_runs(tmp_path: Path):
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "checkpoint"
    _save(checkpoint)
    _plant_payload(checkpoint, marker)

    with pytest.raises(UnsafeCheckpointError) as refused:
        load_state(checkpoint, CPU)
    message = str(refused.value)
    assert str(checkpoint / STATE_FILE) in message and "io.open" in message and "refusing" in message
    assert not marker.exists()


def test_resume_stops_at_an_unsafe_checkpoint_instead_of_falling_back(tmp_path: Path):
    import ray.train

    marker = tmp_path / "payload-ran"
    earlier = tmp_path / checkpoint_dir_name(epoch=0, step=3)
    latest = tmp_path / checkpoint_dir_name(epoch=1, step=6)
    _save(earlier, step=3, epoch=0)
    _save(latest, step=6, epoch=1)
    _plant_payload(latest, marker)
    with pytest.raises(UnsafeCheckpointError, match=str(latest / STATE_FILE)):
        load_latest_valid_state(ray.train.Checkpoint(str(latest)), CPU)

    # the fallback past a half-written newest checkpoint refuses an unsafe older one just the same
    (latest / COMPLETE_MARKER).unlink()
    _plant_payload(earlier, marker)
    with pytest.raises(UnsafeCheckpointError, match=str(earlier / STATE_FILE)):
        load_latest_valid_state(ray.train.Checkpoint(str(latest)), CPU)
    assert not marker.exists()


def test_a_torn_state_file_is_still_only_unreadable(tmp_path: Path):
    _save(tmp_path)
    data = (tmp_path / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(data[: len(data) // 2])
    assert load_state(tmp_path, CPU) is None  # a resume falls back past it, as before


def test_job_config_beside_a_checkpoint_has_no_credentials(tmp_path: Path):
    config = {"tracking": {"tracking_uri": "postgresql://mlflow:S3cretPw@db.internal:5432/mlflow"},
              "data": {"api_key": "AKIAEXAMPLE", "id_column": "id"}}
    _save(tmp_path, config=config)
    saved = (tmp_path / "job_config.json").read_text()
    assert "S3cretPw" not in saved and "AKIAEXAMPLE" not in saved
    assert json.loads(saved) == {"tracking": {"tracking_uri": "postgresql://mlflow:***@db.internal:5432/mlflow"},
                                 "data": {"api_key": "***", "id_column": "id"}}
