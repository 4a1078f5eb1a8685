"""Opening a training run waits out a rival launcher only where one can exist: a name the user chose.

A real MLflow sqlite store, no Ray; the claim's waits are recorded instead of slept.
"""

from __future__ import annotations

import pytest

import jobs.train.run_claim as run_claim
from jobs.common.tracking import TrackingConfig, prepare_tracking
from jobs.train.driver import open_training_run
from jobs.train.settings import RunSettings


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(run_claim.time, "sleep", slept.append)
    return slept


@pytest.fixture
def target(tmp_path):
    return prepare_tracking(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="claims"))


def open_run(target, tmp_path, name: str | None):
    return open_training_run(target, RunSettings(name=name, storage_path=str(tmp_path / "ray")), "claim-test",
                             tags={}, config_dict={}, params={}, dicts={}, baselines={})


def test_an_unnamed_run_is_claimed_without_waiting_for_a_rival(target, tmp_path, waits):
    run = open_run(target, tmp_path, None)
    assert run.name.startswith("claim-test-")
    assert not any(wait >= 0.5 for wait in waits), waits  # the claim's settle wait (2 s) is skipped


def test_a_named_run_still_waits_for_a_rival_launcher_of_the_same_name(target, tmp_path, waits):
    run = open_run(target, tmp_path, "chosen-name")
    assert run.name == "chosen-name"
    assert run_claim.SETTLE_S in waits
