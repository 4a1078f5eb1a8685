"""The sweep's parts that need no Ray: its space, its concurrency, and how it records trials in MLflow."""

from __future__ import annotations

import time
from dataclasses import replace

import mlflow
import pytest

from jobs.common.config import ConfigError, load
from jobs.common.tracking import PARENT_RUN_TAG, TrackingConfig, prepare_tracking
from jobs.sweeps.record import (EARLY_STOPPED, TRIAL_STATE_TAG, TrialOutcome, best_trial, comparison_rows,
                                comparison_table, open_parent, plot_metric_by_param, record_trials)
from jobs.sweeps.runner import concurrent_trials, scheduler_for
from jobs.sweeps.settings import Dimension, SchedulerSettings
from jobs.sweeps.space import check_space_keys, overrides_for, param_space
from jobs.sweeps.trial import EPOCHS_DONE


def test_dimensions_refuse_what_they_cannot_sample():
    with pytest.raises(ValueError, match="low < high"):
        Dimension(kind="uniform", low=1.0, high=1.0)
    with pytest.raises(ValueError, match="low > 0"):
        Dimension(kind="loguniform", low=0.0, high=1.0)
    with pytest.raises(ValueError, match="values"):
        Dimension(kind="choice", low=1.0, high=2.0)
    assert Dimension(kind="loguniform", low=1e-5, high=1e-3).log_scale
    assert Dimension(kind="grid", values=[1e-5, 1e-3]).log_scale
    assert not Dimension(kind="grid", values=[8, 16]).log_scale


def test_space_becomes_tunes_and_values_become_overrides():
    from ray.tune.search.sample import Float

    space = param_space({"optim.lr": Dimension(kind="loguniform", low=1e-4, high=1e-3),
                         "optim.batch_size": Dimension(kind="grid", values=[8, 16])})
    assert isinstance(space["optim.lr"], Float) and space["optim.batch_size"] == {"grid_search": [8, 16]}
    import numpy as np

    assert overrides_for({"optim.lr": np.float64(2.5e-4), "optim.schedule": "cosine"}) == [
        "optim.lr=0.00025", 'optim.schedule="cosine"']


def test_a_space_key_the_job_does_not_have_fails_before_any_trial():
    from jobs.finetune_classifier import FinetuneConfig

    check_space_keys(FinetuneConfig, {"optim.lr": Dimension(kind="uniform", low=1e-4, high=1e-3)}, load)
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        check_space_keys(FinetuneConfig, {"optim.learning_rate": Dimension(kind="uniform", low=0.1, high=0.2)}, load)
    with pytest.raises(ConfigError, match="optim.epochs"):  # an integer key given floats
        check_space_keys(FinetuneConfig, {"optim.epochs": Dimension(kind="uniform", low=1, high=3)}, load)


def test_concurrency_follows_the_cpus_and_gpus_a_trial_reserves():
    assert concurrent_trials({"CPU": 2.0}, {"CPU": 1.0, "GPU": 0.0}, None) == 2
    assert concurrent_trials({"CPU": 2.0}, {"CPU": 1.5, "GPU": 0.0}, None) == 1
    assert concurrent_trials({"CPU": 8.0}, {"CPU": 1.5, "GPU": 0.0}, 2) == 2
    assert concurrent_trials({"CPU": 2.0}, {"CPU": 1.5, "GPU": 0.0}, 4) == 1  # more than fit: what fits
    assert concurrent_trials({"CPU": 1.0}, {"CPU": 3.0, "GPU": 0.0}, None) == 1  # bigger than the cluster: alone
    assert concurrent_trials({"CPU": 64.0, "GPU": 8.0}, {"CPU": 9.0, "GPU": 2.0}, None) == 4  # one per GPU pair


def _outcome(trial_id, state, metric, lr=1e-3, epochs=3):
    return TrialOutcome(trial_id=trial_id, params={"optim.lr": lr}, state=state, metric=metric, epochs=epochs,
                        run_id=None)


def test_best_is_a_finished_trial_by_mode():
    outcomes = [_outcome("a", "finished", 0.5), _outcome("b", EARLY_STOPPED, 0.1), _outcome("c", "finished", 0.3),
                _outcome("d", "failed", None)]
    assert best_trial(outcomes, "min").trial_id == "c"
    assert best_trial(outcomes, "max").trial_id == "a"
    assert best_trial([_outcome("b", EARLY_STOPPED, 0.1)], "min") is None
    table = comparison_table(comparison_rows(outcomes, "val_loss"))
    assert table.splitlines()[0] == "| trial | state | epochs | val_loss | optim.lr | mlflow_run_id |"
    assert len(table.splitlines()) == 6


def test_each_child_ends_as_its_trial_did(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = prepare_tracking(TrackingConfig(tracking_uri=uri, experiment="sweeps"))
    client = mlflow.MlflowClient(uri)
    parent, resumed = open_parent(target, "s1", {"num_samples": 3}, {"optim.lr": {"kind": "uniform"}})
    assert not resumed and open_parent(target, "s1", {}, {}) == (parent, True)  # found again by name
    finished = client.create_run(target.experiment_id, tags={PARENT_RUN_TAG: parent, "ray_run_name": "s1-a"})
    client.set_terminated(finished.info.run_id, "FINISHED")
    client.create_run(target.experiment_id, tags={PARENT_RUN_TAG: parent, "ray_run_name": "s1-b"})  # killed mid-run
    stopped_at = int(time.time() * 1000) - 600_000  # ten minutes before the sweep records it
    outcomes = [_outcome("a", "ended", 0.4), replace(_outcome("b", "ended", 0.9, epochs=1), reported_ms=stopped_at),
                _outcome("c", "failed", None)]
    recorded = record_trials(target, parent, outcomes, {t: f"s1-{t}" for t in "abc"})
    states = {o.trial_id: o.state for o in recorded}
    assert states == {"a": "finished", "b": EARLY_STOPPED, "c": "failed"}
    runs = {o.trial_id: client.get_run(o.run_id) for o in recorded}
    assert [runs[t].info.status for t in "abc"] == ["FINISHED", "KILLED", "FAILED"]
    assert runs["b"].data.tags[TRIAL_STATE_TAG] == EARLY_STOPPED and runs["b"].data.tags["sweep_epochs"] == "1"
    assert runs["b"].info.end_time == stopped_at  # when ASHA stopped it, not when the sweep ended
    assert runs["c"].data.tags[PARENT_RUN_TAG] == parent  # a crash before the job's run: a FAILED child anyway
    assert runs["c"].data.params["optim.lr"] == "0.001"
    plot = tmp_path / "plot.png"
    plot_metric_by_param(recorded, {"optim.lr": Dimension(kind="loguniform", low=1e-4, high=1e-2)}, "val_loss", plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_asha_stops_a_trailing_trial_before_its_last_epoch_never_at_it():
    """Rungs at epochs 1 and 2 of a 2-epoch job: stopped at epoch 2, a trial that has trained to its end would
    lose its test metrics, its model and its FINISHED run for nothing saved (seen: 3 of 6 trials so cut)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    scheduler = scheduler_for(SchedulerSettings(kind="asha", grace_epochs=1, reduction_factor=2.0), max_epochs=2)
    scheduler.set_search_properties("val_loss", "min")
    good, bad, worse = (SimpleNamespace(trial_id=name) for name in ("good", "bad", "worse"))
    for trial in (good, bad, worse):
        scheduler.on_trial_add(None, trial)
    result = lambda epochs, loss: {EPOCHS_DONE: epochs, "val_loss": loss}  # noqa: E731
    assert scheduler.on_trial_result(None, good, result(1, 0.5)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, worse, result(1, 0.9)) == TrialScheduler.STOP  # trails at epoch 1
    assert scheduler.on_trial_result(None, good, result(2, 0.3)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bad, result(1, 0.4)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bad, result(2, 0.8)) == TrialScheduler.CONTINUE  # trails, but done
