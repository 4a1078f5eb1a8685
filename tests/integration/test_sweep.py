"""jobs.sweep on a real local Ray and a real MLflow store: a tiny sweep of four trials over the learning rate,
one trial at a time so ASHA's decisions are fixed by the grid's order (a good rate, a diverging one, one
that crashes, another good one), killed during its last trial, resumed with the same command and
stopped with Ctrl-C while that trial trains again, then resumed once more.

Checked: the parent run and its four nested children; each child's history, every step once; the
trial ASHA stopped is KILLED and tagged early_stopped, not FAILED; the crashed trial FAILED and the
sweep went on; the finished trial with the best val_loss registered with the alias; the resumed sweep
did not train its finished trial again; Ctrl-C ends a sweep with exit 130, its parent KILLED, nothing
registered and the interrupted trial not called early-stopped. Each trial's 2 workers and data stages
need 1.5 of the 2 CPUs: a trial ASHA stopped must hand its workers' CPUs back, or the next one waits
for them forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml

from jobs.common.tracking import PARENT_RUN_TAG
from jobs.sweeps.record import EARLY_STOPPED, SWEEP_TAG, TRIAL_STATE_TAG
from tiny_training import TINY, history_of
from waiting import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REGISTERED = "sweep-tiny"
# 1.0 diverges: ASHA stops it; -1: the job's config refuses it, and the trial crashes before its run exists
LEARNING_RATES = [3e-3, 1.0, -1.0, 2e-3]


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory, tiny_corpus: Path, tiny_model_dir: Path) -> tuple[Path, str, Path]:
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # Relative paths, as a user's config has them: the sweep runs in `root` (see _start), and so must its trials.
    (root / "corpus").symlink_to(tiny_corpus)
    (root / "model").symlink_to(tiny_model_dir)
    config = {
        "job": "finetune_classifier", "job_config": str(TINY),
        "job_overrides": ["data.train=corpus/train.parquet", "data.val=corpus/val.parquet",
                          "data.test=corpus/test.parquet", "model.name_or_path=model",
                          "run.max_failures=0", "scaling.num_workers=2"],
        "space": {"optim.lr": {"kind": "grid", "values": LEARNING_RATES}},
        "metric": "val_loss", "mode": "min", "num_samples": 1, "max_concurrent": 1,
        "scheduler": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 2.0},
        "name": "tiny-sweep", "storage_path": "sweeps",
        "tracking": {"tracking_uri": uri, "experiment": "sweep-tiny", "registered_model": REGISTERED,
                     "alias": "candidate"},
        "ray": {"num_cpus": 2},
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, uri, root


STATE_INTERVAL_S = 3  # Tune saves the sweep's state this often (the job's default: 10 s)


def _sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING"))}
    return {**env, "PYTHONPATH": str(REPO), "TUNE_GLOBAL_CHECKPOINT_S": str(STATE_INTERVAL_S)}


def _start(config: Path, log: Path) -> subprocess.Popen:
    """The sweep command, run from the config's folder (not the repository): its relative paths are from there."""
    return subprocess.Popen([sys.executable, "-m", "jobs.sweep", "--config", str(config)], cwd=config.parent,
                            env=_sweep_env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _runs(uri: str):
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("sweep-tiny")
    return client, (client.search_runs([experiment.experiment_id], max_results=100) if experiment else [])


def _child_of_rate(runs, lr: float):
    """The trial's child run with learning rate ``lr``; None before it exists."""
    return next((r for r in runs if PARENT_RUN_TAG in r.data.tags
                 and float(r.data.params.get("optim.lr", "nan")) == lr), None)


@dataclass(frozen=True)
class Interrupted:
    returncode: int
    log: str
    parent: object  # mlflow Run
    versions: int
    last_child_tags: dict


@dataclass(frozen=True)
class Swept:
    final: subprocess.CompletedProcess
    uri: str
    trained_before: dict
    interrupted: Interrupted


def _ctrl_c(config: Path, root: Path, uri: str) -> Interrupted:
    """The resumed sweep, stopped as a terminal's Ctrl-C does (SIGINT to its process group) once its last
    trial trains again."""
    log = root / "interrupted.log"
    sweep = _start(config, log)
    try:
        wait_for(lambda: "Started training worker group" in log.read_text(errors="replace") or sweep.poll() is not None,
                 600, "the resumed trial's workers")
        time.sleep(3)
        assert sweep.poll() is None, log.read_text(errors="replace")[-3000:]
        os.killpg(sweep.pid, signal.SIGINT)
        returncode = sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    client, runs = _runs(uri)
    parent = next(r for r in runs if r.data.tags.get(SWEEP_TAG) == "tiny-sweep" and PARENT_RUN_TAG not in r.data.tags)
    last = _child_of_rate(runs, LEARNING_RATES[-1])
    return Interrupted(returncode, log.read_text(errors="replace"), parent,
                       len(client.search_model_versions(f"name = '{REGISTERED}'")), dict(last.data.tags))


@pytest.fixture(scope="module")
def swept(sweep_config) -> Swept:
    """The sweep killed (SIGKILL, its whole process group: its Ray too) once a trial finished, resumed and
    stopped with Ctrl-C, then resumed to its end."""
    config, uri, root = sweep_config
    mlflow.MlflowClient(uri).search_experiments()  # the store's tables, before two processes race to make them
    first = _start(config, root / "first.log")
    try:
        # the last trial's run exists: Tune has ended the first three (finished, stopped by ASHA, crashed),
        # which it records within the sweep's state interval. Killed later than ASHA's decision:
        # a restored sweep's scheduler starts with empty rungs (Tune does not keep its state).
        wait_for(lambda: _child_of_rate(_runs(uri)[1], LEARNING_RATES[-1]) is not None or first.poll() is not None,
                 900, "the last trial")
        time.sleep(STATE_INTERVAL_S + 2)
        assert first.poll() is None, (root / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    client, runs = _runs(uri)
    trained_before = {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}
    interrupted = _ctrl_c(config, root, uri)
    final = subprocess.run([sys.executable, "-m", "jobs.sweep", "--config", str(config)], cwd=config.parent,
                           capture_output=True, text=True, timeout=900, env=_sweep_env())
    return Swept(final, uri, trained_before, interrupted)


def test_ctrl_c_ends_the_sweep_with_130_registering_nothing_and_calling_no_trial_stopped(swept):
    stopped = swept.interrupted
    assert stopped.returncode == 130, stopped.log[-4000:]
    assert "the same command resumes it" in stopped.log
    assert stopped.parent.info.status == "KILLED" and stopped.parent.data.tags["sweep_interrupted_trials"]
    assert stopped.versions == 0
    assert TRIAL_STATE_TAG not in stopped.last_child_tags  # neither early-stopped nor finished: not ended


def test_the_resumed_sweep_finishes_and_exits_0(swept):
    final = swept.final
    assert final.returncode == 0, final.stdout[-4000:] + final.stderr[-3000:]
    assert "(resumed)" in final.stdout


def test_one_parent_four_children_each_ended_as_its_trial(swept):
    uri, trained_before = swept.uri, swept.trained_before
    client, runs = _runs(uri)
    parents = [r for r in runs if r.data.tags.get(SWEEP_TAG) == "tiny-sweep" and PARENT_RUN_TAG not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id]
    assert len(children) == len(LEARNING_RATES), [c.info.run_name for c in children]
    by_lr = {float(c.data.params["optim.lr"]): c for c in children}
    assert set(by_lr) == set(LEARNING_RATES)
    crashed, useless = by_lr[-1.0], by_lr[1.0]
    assert crashed.info.status == "FAILED" and crashed.data.tags[TRIAL_STATE_TAG] == "failed"
    assert "optim" in crashed.data.tags["sweep_trial_error"]  # why, naming the key: the run never started
    assert "lr must be a positive learning rate" in crashed.data.tags["sweep_trial_error"]
    assert useless.info.status == "KILLED" and useless.data.tags[TRIAL_STATE_TAG] == EARLY_STOPPED
    first = by_lr[3e-3]  # alone at each of ASHA's rungs: never stopped
    assert first.info.status == "FINISHED" and first.data.tags[TRIAL_STATE_TAG] == "finished"
    assert first.data.metrics["epoch"] == 2  # all three epochs
    last = by_lr[2e-3]  # killed with the sweep, resumed, compared with no one (empty rungs): it finishes
    assert last.info.status == "FINISHED" and last.data.tags[TRIAL_STATE_TAG] == "finished"
    # the trial that had finished before the kill was not trained again
    assert by_lr[3e-3].info.run_id in trained_before
    assert by_lr[3e-3].info.end_time == trained_before[by_lr[3e-3].info.run_id]
    assert int(useless.data.tags["sweep_epochs"]) == 1  # stopped at ASHA's first rung, before the kill
    for child in children:  # every child's history: each step once
        for key in ("train_loss", "val_loss"):
            history_of(client, child.info.run_id, key)
    assert len(history_of(client, useless.info.run_id, "val_loss")) < len(
        history_of(client, by_lr[3e-3].info.run_id, "val_loss"))


def test_the_best_finished_trial_is_registered_with_the_alias_and_compared_on_the_parent(swept):
    uri = swept.uri
    client, runs = _runs(uri)
    parent = next(r for r in runs if r.data.tags.get(SWEEP_TAG) == "tiny-sweep" and PARENT_RUN_TAG not in r.data.tags)
    finished = [r for r in runs
                if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id and r.info.status == "FINISHED"]
    best = min(finished, key=lambda r: r.data.metrics["val_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.data.metrics["val_loss"])
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert version.run_id == best.info.run_id and version.tags["sweep_run_id"] == parent.info.run_id
    assert len(client.search_model_versions(f"name = '{REGISTERED}'")) == 1  # once, across the kill
    assert f"sweep run `{parent.info.run_id}`" in version.description  # its model card
    assert f"--set model=models:/{REGISTERED}/{version.version}" in version.description
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "trials.json", "search_space.json", "val_loss_by_hyperparameter.png"} <= artifacts
    stopped = sum(r.data.tags.get(TRIAL_STATE_TAG) == EARLY_STOPPED for r in runs)
    assert parent.data.tags["trials_failed"] == "1" and parent.data.tags["trials_early_stopped"] == str(stopped)
