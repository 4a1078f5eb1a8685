"""The fault tests' slowing (jobs.common.injected_delay): it ends once the test's end file exists, and it reaches
the Ray workers and actors of a cluster that does not see the driver's environment."""

from __future__ import annotations

import pytest

from jobs.common import injected_delay
from jobs.common.injected_delay import DELAY_END_ENV, InjectedDelay
from jobs.scoring.pipeline import _test_env
from jobs.scoring.predictors import PREDICT_DELAY_ENV
from jobs.train.callbacks import STEP_DELAY_ENV, StepDelay, callbacks_for
from jobs.train.driver import worker_env


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(injected_delay.time, "sleep", calls.append)
    return calls


def test_steps_sleep_until_the_end_file_exists_then_never_again(tmp_path, monkeypatch, slept):
    end = tmp_path / "fault-in"
    monkeypatch.setenv(STEP_DELAY_ENV, "0.5")
    monkeypatch.setenv(DELAY_END_ENV, str(end))
    [delay] = [c for c in callbacks_for(rank=1, audit_dir=None).callbacks if isinstance(c, StepDelay)]
    delay.after_step(1)
    delay.after_step(2)
    end.touch()
    delay.after_step(3)
    end.unlink()  # ended for good: a step no longer looks for the file
    delay.after_step(4)
    assert slept == [0.5, 0.5]


def test_without_an_end_file_every_call_sleeps(monkeypatch, slept):
    monkeypatch.setenv(PREDICT_DELAY_ENV, "0.25")
    monkeypatch.delenv(DELAY_END_ENV, raising=False)
    delay = InjectedDelay.from_env(PREDICT_DELAY_ENV)
    for _ in range(3):
        delay.sleep()
    assert slept == [0.25] * 3


def test_no_delay_variable_no_delay(monkeypatch):
    monkeypatch.delenv(STEP_DELAY_ENV, raising=False)
    monkeypatch.setenv(DELAY_END_ENV, "/nowhere")
    assert InjectedDelay.from_env(STEP_DELAY_ENV) is None
    assert not callbacks_for(rank=0, audit_dir=None)


def test_the_end_file_travels_with_the_delay_to_training_workers_and_scoring_actors(monkeypatch):
    monkeypatch.setenv(STEP_DELAY_ENV, "1.0")
    monkeypatch.setenv(PREDICT_DELAY_ENV, "0.5")
    monkeypatch.setenv(DELAY_END_ENV, "/tmp/end")
    assert worker_env()[STEP_DELAY_ENV] == "1.0" and worker_env()[DELAY_END_ENV] == "/tmp/end"
    assert _test_env()["runtime_env"]["env_vars"] == {PREDICT_DELAY_ENV: "0.5", DELAY_END_ENV: "/tmp/end"}
    monkeypatch.delenv(PREDICT_DELAY_ENV)
    assert _test_env() == {}  # the end file alone slows nothing: nothing to ship
