"""The bounded wait for MLflow (a fake clock) and what the jobs print when it runs out."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException, RestException

from jobs.common.tracking import filter_literal
from jobs.common.tracking_retry import OutageRetry, TrackingUnavailable, is_transient


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_an_outage_is_retried_until_the_tolerance_then_named():
    clock = Clock()
    retry = OutageRetry(60.0, sleep=clock.sleep, clock=clock)
    calls = []

    def down():
        calls.append(clock.now)
        raise MlflowException("API request failed: connection refused")

    with pytest.raises(TrackingUnavailable, match="did not answer for 60 s while registering the model"):
        retry.call("registering the model", down)
    assert 5 < len(calls) < 15 and clock.now == 60.0  # backoff 1, 2, 4 ... 30 s, capped by the tolerance


def test_a_success_ends_the_outage_and_the_next_one_gets_the_whole_tolerance():
    clock = Clock()
    retry = OutageRetry(10.0, sleep=clock.sleep, clock=clock)
    answers = iter([OSError("reset"), OSError("reset"), "ok"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry.call("a step", flaky) == "ok"
    clock.now += 1000.0
    answers = iter([OSError("reset"), "again"])
    assert retry.call("a later step", flaky) == "again"


def test_a_request_mlflow_refuses_on_its_merits_is_not_retried():
    retry = OutageRetry(60.0, sleep=lambda s: pytest.fail("slept"), clock=lambda: 0.0)
    refused = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad value"})  # what REST raises
    assert not is_transient(refused) and is_transient(MlflowException("503")) and is_transient(ConnectionError())
    with pytest.raises(MlflowException, match="bad value"):
        retry.call("a step", lambda: (_ for _ in ()).throw(refused))
    assert not is_transient(TypeError("a bug is not an outage"))


def test_search_filter_literals_quote_what_mlflow_can_express():
    assert filter_literal("plain", "run.name") == "'plain'"
    assert filter_literal("it's", "run.name") == '"it\'s"'
    assert filter_literal('say "hi"', "run.name") == "'say \"hi\"'"
    with pytest.raises(ValueError, match="run.name .* holds both"):
        filter_literal("it's \"x\"", "run.name")


def test_the_finish_command_names_the_checkpoint_and_keeps_credentials_out():
    from jobs.train.run_tracking import Registration, finish_command

    request = Registration(run_id="abc", run_name="n", checkpoint="/runs/ray/n/epoch-0002-step-0000036",
                           step=36, registered_model="m", alias="candidate")
    line = finish_command(request, "http://127.0.0.1:5000", saved=True)
    assert line.endswith("-m jobs.register_checkpoint --checkpoint /runs/ray/n/epoch-0002-step-0000036 "
                         "--run-id abc --tracking-uri http://127.0.0.1:5000")
    assert "secret" not in finish_command(request, "https://user:secret@mlflow:5000", saved=True)
    assert "--registered-model m --alias candidate" in finish_command(request, "http://h:1", saved=False)
