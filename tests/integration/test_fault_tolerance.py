"""Faults injected for real on a real local Ray: a killed worker, a killed driver, a half-written checkpoint.

Every run uses ``run.deterministic`` so a resumed run can be compared with an uninterrupted
one: same seed, config and worker count give the same parameters and metrics on CPU. The last
test ends rank 0 right after an epoch's metrics reached MLflow and before that epoch's checkpoint
(before the first one, then before the second): the restarted workers log nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from jobs.common.config import load
from jobs.train.classifier import FinetuneConfig
from jobs.train.classifier import run as run_finetune

from jobs.train.callbacks import STEP_DELAY_ENV
from tiny_training import TINY, TOLERANCE, latest_recorded_checkpoint, tiny_config
from tiny_training import assert_history_exactly_once as check_history
from waiting import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# A tiny epoch takes about a second; slowed down, a kill issued right after the first checkpoint
# lands in the middle of the second epoch rather than after the run has finished.
STEP_DELAY_S = "0.5"


@pytest.fixture
def slow_steps(monkeypatch):
    monkeypatch.setenv(STEP_DELAY_ENV, STEP_DELAY_S)


def assert_history_exactly_once(run_id: str, reference_run_id: str) -> None:
    """No step logged twice, and the same curve as the uninterrupted run, step for step (one store)."""
    client = mlflow.MlflowClient()
    check_history(client, run_id, client, reference_run_id)



def checkpoints(storage: Path, name: str) -> list[Path]:
    return sorted((storage / name).glob("epoch-*/COMPLETE"))


def registered_checkpoint(storage: Path, name: str) -> bool:
    return latest_recorded_checkpoint(str(storage / name)) is not None


@pytest.fixture(scope="module")
def reference(tiny_reference):
    """An uninterrupted run (one per session, shared with the tracking-outage tests)."""
    return tiny_reference


def training_workers() -> list:
    """Ray Train worker processes of this test session's Ray (descendants of this process only)."""
    import psutil

    return [proc for proc in psutil.Process().children(recursive=True)
            if "RayTrainWorker" in " ".join(proc.cmdline() if proc.is_running() else [])]


def _val_losses_when_the_restart_shows(name: str) -> list[int]:
    """How many epochs' val_loss the run has when its ``restarts`` tag first reads 1 (empty: never).

    The tag is read before the history: a batch carrying both cannot then pass for the tag alone.
    """
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("finetune-tiny")
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.ray_run_name = '{name}'") \
            if experiment is not None else []
        if runs and runs[0].data.tags.get("restarts") == "1":
            return [len(client.get_metric_history(runs[0].info.run_id, "val_loss"))]
        if runs and runs[0].info.status != "RUNNING":
            return []
        time.sleep(0.1)
    return []


def test_killed_worker_is_replaced_and_training_resumes(reference, slow_steps, tiny_corpus, tiny_model_dir,
                                                         session_dir):
    storage = session_dir / "ft-ray"
    config = load(FinetuneConfig, TINY, tiny_config(tiny_corpus, tiny_model_dir, storage, "worker-kill"))
    killed: list[int] = []
    seen_at_restart: list[int] = []  # val_loss points in MLflow when the restart first shows

    def kill_a_worker_after_first_checkpoint() -> None:
        wait_for(lambda: registered_checkpoint(storage, "worker-kill"), 300, "the first recorded checkpoint")
        time.sleep(1.0)  # into the second epoch
        workers = training_workers()
        if workers:
            workers[-1].send_signal(signal.SIGKILL)
            killed.append((workers[-1].pid, len(checkpoints(storage, "worker-kill"))))
            seen_at_restart.extend(_val_losses_when_the_restart_shows("worker-kill"))

    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, daemon=True)
    killer.start()
    outcome = run_finetune(config)
    killer.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert killed[0][1] < 3, "the worker must die before the last checkpoint"
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert run.data.tags["restarts"] == "1"
    # the restart is in MLflow as soon as the group resumes, before its first epoch ends (a group lost
    # or resized before then would otherwise take the event with it)
    assert seen_at_restart == [killed[0][1]], "the restart reached MLflow only with a later epoch's metrics"
    steps_per_epoch = int(reference.metrics["step"]) // 3
    assert run.data.tags["resumed_from_steps"] == str(killed[0][1] * steps_per_epoch)
    assert_history_exactly_once(outcome.run_id, reference.run_id)
    assert outcome.metrics["step"] == reference.metrics["step"]
    assert abs(outcome.metrics["test_loss"] - reference.metrics["test_loss"]) < TOLERANCE
    assert abs(outcome.metrics["val_loss"] - reference.metrics["val_loss"]) < TOLERANCE


def _job_command(corpus, model_dir, storage, name, epochs: int) -> list[str]:
    command = [sys.executable, "-m", "jobs.finetune_classifier", "--config", str(TINY)]
    for item in tiny_config(corpus, model_dir, storage, name) + [f"optim.epochs={epochs}"]:
        command += ["--set", item]
    return command


def _run_job(command, env, kill_when=None) -> int:
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if kill_when is not None:
            wait_for(lambda: kill_when() or process.poll() is not None, 300, "the kill condition")
            time.sleep(1.0)  # into the next epoch
            os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started
            process.wait(timeout=30)
            return -9
        return process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_killed_driver_rerun_with_same_name_resumes_same_mlflow_run_past_a_half_written_checkpoint(
        reference, mlflow_uri, tiny_corpus, tiny_model_dir, session_dir):
    """The driver (and the local Ray it started) killed in its third epoch, its latest checkpoint then left
    half-written (as by a writer that died): the same command resumes the same MLflow run from the complete
    checkpoint before it, not from the broken one Ray hands back, and logs every step once."""
    storage, name = session_dir / "driver-ray", "driver-kill"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           STEP_DELAY_ENV: STEP_DELAY_S}
    env.pop("RAY_ADDRESS", None)  # the job starts its own local Ray, which dies with it
    command = _job_command(tiny_corpus, tiny_model_dir, storage, name, epochs=3)

    def in_last_epoch() -> bool:
        return (latest_recorded_checkpoint(str(storage / name)) or "").startswith("epoch-0001")

    _run_job(command, env, kill_when=in_last_epoch)
    assert len(checkpoints(storage, name)) == 2, "the driver must die in the last epoch"
    latest = storage / name / latest_recorded_checkpoint(str(storage / name))
    (latest / "COMPLETE").unlink()  # as if the writer died before finishing
    (latest / "train_state.pt").write_bytes(b"truncated")
    rerun_env = {k: v for k, v in env.items() if k != STEP_DELAY_ENV}  # slowed only so that the kill lands mid-run
    assert _run_job(command, rerun_env) == 0
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("finetune-tiny").experiment_id],
                              filter_string=f"tags.ray_run_name = '{name}'")
    assert len(runs) == 1, "the rerun must continue the same MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["restarts"]) == 1
    steps_per_epoch = int(reference.metrics["step"]) // 3
    # resumed from the complete epoch-0 checkpoint, not the broken epoch-1 one
    assert run.data.tags["resumed_from_steps"].split(",")[-1] == str(steps_per_epoch)
    assert_history_exactly_once(run.info.run_id, reference.run_id)
    assert abs(run.data.metrics["test_loss"] - reference.metrics["test_loss"]) < TOLERANCE
    assert run.data.metrics["step"] == reference.metrics["step"]


def test_early_stopping_keeps_the_best_checkpoint_and_the_latest(tiny_corpus, tiny_model_dir, session_dir):
    """Watching ``step`` as if lower were better makes epoch 0 the best and every later one stale."""
    storage = session_dir / "ft-ray"
    name = "early-stop"
    config = load(FinetuneConfig, TINY, tiny_config(tiny_corpus, tiny_model_dir, storage, name) + [
        "optim.early_stopping_patience=1", "run.checkpoint_metric=step", "run.checkpoint_mode=min",
        "run.keep_checkpoints=1"])
    outcome = run_finetune(config)
    kept = sorted(p.parent.name for p in checkpoints(storage, name))
    assert [k.split("-step-")[0] for k in kept] == ["epoch-0000", "epoch-0001"]  # best + latest, of 2 epochs (not 3)
    assert outcome.checkpoint_path.endswith(kept[-1])
    assert "test_accuracy" in outcome.metrics  # a stopped run is still evaluated on the test split
    history = mlflow.MlflowClient().get_metric_history(outcome.run_id, "val_loss")
    assert len(history) == 2


def test_worker_dying_between_a_send_and_its_checkpoint_logs_nothing_twice(reference, tiny_corpus, tiny_model_dir,
                                                                            session_dir, tmp_path, monkeypatch):
    """Rank 0 exits once epoch 0's metrics are in MLflow (no checkpoint yet: its restart starts from scratch),
    then once epoch 1's are (that restart resumes from epoch 0's checkpoint). Logging every 5 steps of epochs
    of 12, the end-of-epoch metrics fall off the logging grid."""
    from jobs.train.callbacks import DIE_AFTER_SEND_ENV
    from tiny_training import history_of

    monkeypatch.setenv(DIE_AFTER_SEND_ENV, f"{tmp_path}:0,1")
    name = "die-after-send"
    config = load(FinetuneConfig, TINY, tiny_config(tiny_corpus, tiny_model_dir, session_dir / "ft-ray", name, **{
        "optim.log_every_steps": "5", "run.max_failures": "2"}))
    outcome = run_finetune(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["died-after-send-epoch0", "died-after-send-epoch1"]
    client = mlflow.MlflowClient()
    per_epoch = int(reference.metrics["step"]) // 3
    ends, grid = [per_epoch * (e + 1) for e in range(3)], list(range(5, int(reference.metrics["step"]) + 1, 5))
    assert not set(ends) & set(grid)
    for key in ("val_loss", "val_accuracy"):  # each history_of also fails on a step logged twice
        assert history_of(client, outcome.run_id, key) == pytest.approx(history_of(client, reference.run_id, key),
                                                                        abs=TOLERANCE)
    assert sorted(history_of(client, outcome.run_id, "train_loss")) == grid
    rates, expected = history_of(client, outcome.run_id, "learning_rate"), history_of(client, reference.run_id,
                                                                                      "learning_rate")
    assert rates == pytest.approx({step: expected[step] for step in grid}, abs=TOLERANCE)
    assert sorted(history_of(client, outcome.run_id, "epoch")) == sorted(grid + ends)
    tags = client.get_run(outcome.run_id).data.tags
    assert tags["restarts"] == "1" and tags["resumed_from_steps"] == str(ends[0])
    assert abs(outcome.metrics["test_loss"] - reference.metrics["test_loss"]) < TOLERANCE
