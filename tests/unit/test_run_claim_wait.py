"""Opening a training run waits out a rival launcher only where one can exist: a name the user chose,
and only for what is left of the settle time once the driver has built its trainer.

A real MLflow sqlite store, no Ray; the claim's waits are recorded instead of slept, on a clock the test moves.
"""

from __future__ import annotations

import pytest

import jobs.train.run_claim as run_claim
from jobs.common.tracking import TrackingConfig, client_for, prepare_tracking
from jobs.train.driver import open_training_run
from jobs.train.run_claim import LAUNCHER_TAG, Launcher, RunClaim, RunNameTaken
from jobs.train.run_tracking import RunTracker
from jobs.train.settings import RunSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(run_claim.time, "monotonic", clock)
    return clock


@pytest.fixture
def waits(monkeypatch, clock) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(run_claim.time, "sleep", slept.append)
    return slept


@pytest.fixture
def target(tmp_path):
    return prepare_tracking(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="claims"))


def open_run(target, tmp_path, name: str | None) -> tuple[RunTracker, str]:
    tracker = RunTracker(target, 0.0)
    run = open_training_run(target, RunSettings(name=name, storage_path=str(tmp_path / "ray")), "claim-test",
                            tags={}, config_dict={}, params={}, dicts={}, baselines={}, tracker=tracker)
    return tracker, run.name


def test_an_unnamed_run_is_claimed_without_waiting_for_a_rival(target, tmp_path, waits):
    tracker, name = open_run(target, tmp_path, None)
    tracker.confirm_claim()
    assert name.startswith("claim-test-")
    assert not any(wait >= 0.5 for wait in waits), waits  # the claim's settle wait (2 s) is skipped


def test_a_named_run_waits_for_a_rival_only_for_what_the_drivers_work_since_its_claim_has_not_covered(
        target, tmp_path, clock, waits):
    tracker, name = open_run(target, tmp_path, "chosen-name")
    assert name == "chosen-name"
    assert not any(wait > 0 for wait in waits), waits  # opening the run does not wait
    clock.now += 1.5  # the driver plans its datasets and builds its trainer
    tracker.confirm_claim()
    assert waits[-1] == pytest.approx(run_claim.SETTLE_S - 1.5)

    second, _ = open_run(target, tmp_path, "another-name")
    clock.now += run_claim.SETTLE_S + 1.0
    second.confirm_claim()
    assert waits[-1] == 0.0


def test_a_launcher_that_lost_the_claim_while_it_planned_leaves_the_run_to_the_winner(target, tmp_path, waits):
    client = client_for(target)
    earlier = RunClaim(client, target.experiment_id, "contested", settle_s=0.0)
    run_id, _ = earlier.acquire({})
    client.set_terminated(run_id, status="FINISHED")  # a finished run of the name: the next launcher resumes it
    tracker, _ = open_run(target, tmp_path, "contested")
    # a rival that read the run before this launcher's claim landed writes its own after it
    rival = Launcher.this_process()
    client.set_tag(run_id, LAUNCHER_TAG, rival.to_tag())

    with pytest.raises(RunNameTaken):
        tracker.confirm_claim()
    tracker.end_failed()  # what the driver does with any error before or during the fit

    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # not marked FAILED under the winner
    assert Launcher.from_tag(run.data.tags[LAUNCHER_TAG]) == rival
