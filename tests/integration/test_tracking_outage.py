"""A tracking server that goes away: a real `mlflow server` stopped, and started again on the same store.

The client's retry window is shortened to about a second (``MLFLOW_HTTP_REQUEST_*``, shipped to
the training workers too), so a stop of ten seconds and more stands for an outage longer than the
default four minutes. One server serves the module; the uninterrupted reference run is the
session's (``tiny_reference``, sqlite store). Targeted refusals (one kind of request answered 503)
go through ``tests/mlflow_proxy.py`` in front of the same server.

- Training, stopped after the first logged step and started again while it runs: the run
  finishes, every step once, a checkpoint per epoch (the first written during the outage, with the
  metrics MLflow had not received), the model registered.
- Training, stopped for good until after it ends: the job stops after ``outage_tolerance_s``
  saying the one command that finishes the run; started again, that command does, exactly once.
  Rerunning the finished run then registers nothing and moves no alias.
- batch_infer and score_partitions, stopped while they score: output complete and committed,
  exit 0 with a warning (and for batch_infer, the command that records the summary later).
- promote with its tag writes refused: exit before @production moves; registration and the run's
  end through a flaky server: retried, one version, the run FINISHED or FAILED.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.common.config import load
from jobs.common.injected_delay import DELAY_END_ENV
from jobs.train.classifier import FinetuneConfig
from jobs.train.classifier import run as run_finetune
from jobs.train.callbacks import STEP_DELAY_ENV
from jobs.train.run_tracking import TrackingIncomplete
from mlflow_proxy import FaultProxy
from tiny_training import REPO, TINY, assert_history_exactly_once, tiny_config
from tracking_server import StoppableServer
from waiting import wait_for

pytestmark = pytest.mark.slow

REGISTERED = "outage-sentiment"
EXPERIMENT = "tracking-outage"
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
OUTAGE_S = 12.0  # at least this long: many times the shortened retry window


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlflow_uri):
    """The module's server, with the client's retries shortened for the module (workers included)."""
    server = StoppableServer(tmp_path_factory.mktemp("outage-server"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in SHORT_RETRIES.items():
            patch.setenv(key, value)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            mlflow.set_tracking_uri(mlflow_uri)  # the jobs pointed the process at this server
            mlflow.set_registry_uri(mlflow_uri)


@pytest.fixture
def up(server):
    """The server answering at the start of a test (a failed test may have left it stopped)."""
    server.start()
    return server



def stop_once(server: StoppableServer, ready, what: str) -> tuple[threading.Thread, threading.Event]:
    """Stop the server once ``ready()``; a job that ended first (``done`` set) leaves it running."""
    done = threading.Event()

    def stopper() -> None:
        wait_for(lambda: done.is_set() or ready(), 300, what)
        if not done.is_set():
            server.stop()

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    return thread, done


def complete_checkpoints(storage: Path, name: str) -> list[Path]:
    return sorted(p.parent for p in (storage / name).glob("epoch-*/COMPLETE"))


def logged_a_step(url: str, name: str) -> bool:
    try:
        client = mlflow.MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                  filter_string=f"tags.ray_run_name = '{name}'")
        return bool(runs and client.get_metric_history(runs[0].info.run_id, "train_loss"))
    except Exception:  # noqa: BLE001 -- not yet there
        return False


def training(tiny_corpus, tiny_model_dir, storage: Path, name: str, url: str, **extra: str) -> FinetuneConfig:
    return load(FinetuneConfig, TINY, tiny_config(
        tiny_corpus, tiny_model_dir, storage, name, **{"tracking.tracking_uri": url, "tracking.experiment": EXPERIMENT,
                                                        "tracking.registered_model": REGISTERED, **extra}))


def stop_after_first_step(server: StoppableServer, url: str, name: str, storage: Path, restart: bool,
                          events: dict, end_delays: Path | None = None) -> threading.Thread:
    """Stop the server once the run's first steps are in it (sent at epoch 0's end); with ``restart``, start
    it again after a checkpoint was written while it was down, and at least ``OUTAGE_S`` after the stop,
    then create ``end_delays`` (the run's slowed steps, no longer needed, end)."""
    def outage() -> None:
        wait_for(lambda: logged_a_step(url, name), 300, "the first logged step")
        server.stop()
        events["stopped"] = time.monotonic()
        before = set(complete_checkpoints(storage, name))
        if restart:
            try:
                wait_for(lambda: set(complete_checkpoints(storage, name)) - before, 120, "a checkpoint in the outage")
                events["during"] = sorted(set(complete_checkpoints(storage, name)) - before)[0]
            finally:  # the server comes back whatever happened (the test's assertions say what)
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - events["stopped"])))
                server.start()
                events["started"] = time.monotonic()
                if end_delays is not None:
                    end_delays.touch()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


def test_server_stopped_during_training_run_finishes_with_every_step_once(
        up, tiny_reference, mlflow_uri, tiny_corpus, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(STEP_DELAY_ENV, "1.0")  # ~12 s an epoch: back for the last epoch's end, replayed there
    server_back = tmp_path / "server-back"  # the slowed steps end once the server is back
    monkeypatch.setenv(DELAY_END_ENV, str(server_back))
    storage, name = tmp_path / "ray", "outage-mid-training"
    events: dict = {}
    thread = stop_after_first_step(up, up.url, name, storage, restart=True, events=events, end_delays=server_back)
    try:
        outcome = run_finetune(training(tiny_corpus, tiny_model_dir, storage, name, up.url))
    finally:
        thread.join(timeout=150)  # the fault is over (the server back) before anything else runs
    assert events["started"] - events["stopped"] >= OUTAGE_S

    client = mlflow.MlflowClient(up.url)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert_history_exactly_once(client, outcome.run_id, mlflow.MlflowClient(mlflow_uri), tiny_reference.run_id)
    assert abs(outcome.metrics["test_loss"] - tiny_reference.metrics["test_loss"]) < 1e-4
    kept = complete_checkpoints(storage, name)
    assert [p.name.split("-step-")[0] for p in kept] == ["epoch-0000", "epoch-0001", "epoch-0002"]
    carried = json.loads((events["during"] / "tracking_pending.json").read_text())
    assert any(key == "val_loss" for key, *_ in carried["points"])  # its epoch ended with the server down
    assert run.data.tags["train_device"] == "cpu" and "restarts" not in run.data.tags
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert version.run_id == outcome.run_id and str(version.version) == outcome.registered_version


def test_server_down_past_the_end_the_job_says_how_to_finish_and_that_finishes_it_once(
        up, tiny_reference, mlflow_uri, tiny_corpus, tiny_model_dir, tmp_path):
    storage, name = tmp_path / "ray", "outage-past-the-end"
    config = training(tiny_corpus, tiny_model_dir, storage, name, up.url, **{"tracking.outage_tolerance_s": "3"})
    events: dict = {}
    thread = stop_after_first_step(up, up.url, name, storage, restart=False, events=events)
    started = time.monotonic()
    try:
        with pytest.raises(TrackingIncomplete) as failure:
            run_finetune(config)
    finally:
        thread.join(timeout=150)
    message = str(failure.value)
    assert "checkpoint is complete" in message and "stays RUNNING" in message
    command = message.rsplit("\n", 1)[-1].strip()
    assert " -m jobs.register_checkpoint --checkpoint " in command
    assert len(complete_checkpoints(storage, name)) == 3
    print(f"training with the server down: {time.monotonic() - started:.0f} s")

    up.start()
    finished = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    client = mlflow.MlflowClient(up.url)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                               filter_string=f"tags.ray_run_name = '{name}'")
    assert run.info.status == "FINISHED"
    assert_history_exactly_once(client, run.info.run_id, mlflow.MlflowClient(mlflow_uri), tiny_reference.run_id)
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert version.run_id == run.info.run_id
    assert f"version {version.version}" in run.data.tags["mlflow.note.content"]
    logged = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    assert sorted(m.name for m in logged) == ["epoch-0", "epoch-1", "epoch-2", "model"]

    # Rerunning the finished run (the same run.name) registers nothing and moves no alias.
    versions = {v.version for v in client.search_model_versions(f"name = '{REGISTERED}'")}
    other = min(versions, key=int)
    client.set_registered_model_alias(REGISTERED, "candidate", other)  # someone moved it since
    again = run_finetune(training(tiny_corpus, tiny_model_dir, storage, name, up.url))
    assert again.already_registered and again.registered_version == str(version.version)
    assert {v.version for v in client.search_model_versions(f"name = '{REGISTERED}'")} == versions
    assert client.get_model_version_by_alias(REGISTERED, "candidate").version == other
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


# ---------------------------------------------------------------- scoring: the outage after the work

def test_batch_infer_publishes_and_exits_0_when_the_server_stops_while_it_scores(
        up, ray_local, tiny_corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from jobs.batch_infer import main
    from jobs.scoring.batch import PAUSE_AFTER_CHUNK_ENV
    from jobs.scoring.sink import committed_files

    folder, scores = tmp_path / "in", tmp_path / "scores"
    folder.mkdir()
    table = pq.read_table(tiny_corpus / "train.parquet").select(["id", "text"]).slice(0, 24)
    for k in range(2):
        pq.write_table(table.slice(12 * k, 12), folder / f"part-{k}.parquet")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(folder)}, "output_dir": str(scores), "model": str(tiny_model_dir), "run_name": "outage",
        "chunk_rows": 12, "max_length": 32, "stages": {"min_blocks": 1, "tokenize_batch_rows": 64},
        "predictor": {"concurrency": 1, "num_cpus": 0.5, "rows_per_call": 32, "tokenize_in_actor": True},
        "tracking": {"tracking_uri": up.url, "experiment": "outage-batch-infer", "outage_tolerance_s": 2}}))
    monkeypatch.setenv(PAUSE_AFTER_CHUNK_ENV, "2")
    chunks = scores / "_staging" / "outage" / "chunks"
    stopper, done = stop_once(up, lambda: list(chunks.glob("*.json")), "a committed chunk")
    try:
        assert main(["--config", str(config)]) == 0
    finally:
        done.set()
        stopper.join(timeout=30)
    err = capsys.readouterr().err
    assert "the output is complete and published" in err and " -m jobs.record_scoring --output " in err
    output = scores / "outage"
    ids = [i for p in committed_files(str(output)) for i in pq.read_table(p).column("id").to_pylist()]
    assert sorted(ids) == sorted(table.column("id").to_pylist())
    assert not (scores / "_staging" / "outage").exists()

    up.start()
    command = err.rsplit(" -m jobs.record_scoring ", 1)[1].splitlines()[0]
    recorded = subprocess.run([sys.executable, "-m", "jobs.record_scoring", *shlex.split(command)], cwd=REPO,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    client = mlflow.MlflowClient(up.url)
    [run] = client.search_runs([client.get_experiment_by_name("outage-batch-infer").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["rows_in"] == 24


def test_score_partitions_commits_and_reports_when_the_server_stops_while_it_scores(
        up, ray_local, tiny_corpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from jobs.score_partitions import main
    from jobs.scoring.partitions import PAUSE_BEFORE_COMMIT_ENV
    from jobs.scoring.ledger import committed_outputs

    incoming, scored = tmp_path / "incoming", tmp_path / "scored"
    folder = incoming / "date=2026-12-01"
    folder.mkdir(parents=True)
    table = pq.read_table(tiny_corpus / "train.parquet").select(["id", "text"]).slice(0, 20)
    pq.write_table(table, folder / "part-0.parquet")
    (folder / "_SUCCESS").touch()
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(incoming)}, "output_root": str(scored), "model": str(tiny_model_dir), "max_length": 32,
        "stages": {"min_blocks": 1, "tokenize_batch_rows": 64},
        "predictor": {"concurrency": 1, "num_cpus": 0.5, "rows_per_call": 32, "tokenize_in_actor": True},
        "tracking": {"tracking_uri": up.url, "experiment": "outage-score-partitions", "outage_tolerance_s": 2}}))
    monkeypatch.setenv(PAUSE_BEFORE_COMMIT_ENV, "3")  # the stop lands between scoring and committing
    stopper, done = stop_once(up, lambda: scored.exists() and any(scored.rglob("*.parquet")), "scored rows")
    try:
        assert main(["--config", str(config)]) == 0
    finally:
        done.set()
        stopper.join(timeout=30)
    captured = capsys.readouterr()
    assert "lacks its summary and stays RUNNING" in captured.err
    assert "1 scored" in captured.out  # the outcome is printed all the same
    committed = committed_outputs(str(scored), "scored")
    ids = [i for paths in committed.values() for p in paths for i in pq.read_table(p).column("id").to_pylist()]
    assert sorted(ids) == sorted(table.column("id").to_pylist())


# ---------------------------------------------------------------- targeted refusals through a proxy

@pytest.fixture
def proxy(up):
    proxy = FaultProxy(up.url)
    yield proxy
    proxy.close()


def registered_versions(client, name: str, count: int, model_dir: Path) -> list[str]:
    from jobs.common.registry import TextClassifierModel, log_and_register
    from jobs.common.tracking import TrackingTarget

    experiment = client.get_experiment_by_name(EXPERIMENT) or client.get_experiment(
        client.create_experiment(EXPERIMENT))
    target = TrackingTarget(client.tracking_uri, experiment.experiment_id, client.tracking_uri)
    return [log_and_register(target, client.create_run(experiment.experiment_id).info.run_id, TextClassifierModel(),
                             model_dir, name, None).version for _ in range(count)]


def test_promote_whose_tag_writes_fail_moves_nothing(proxy, tiny_model_dir, tmp_path):
    from jobs.common.tracking import TrackingConfig, prepare_tracking
    from jobs.evaluation.promotion import Decision, PromoteConfig, Version, record

    client = mlflow.MlflowClient(proxy.url)
    old, new = registered_versions(client, "promote-outage", 2, tiny_model_dir)
    client.set_registered_model_alias("promote-outage", "production", old)
    client.set_registered_model_alias("promote-outage", "candidate", new)
    data = tmp_path / "labelled.csv"
    data.write_text("id,text,label\n1,好,positive\n")
    labelled = dataclasses.replace(PromoteConfig().input, path=str(data))  # input.train_path: the default
    config = PromoteConfig(registered_model="promote-outage", input=labelled, require_beat_baseline=False,
                           tracking=TrackingConfig(tracking_uri=proxy.url, experiment="promote-outage",
                                                   outage_tolerance_s=1))
    target = prepare_tracking(config.tracking)
    proxy.refuse("/model-versions/set-tag")  # the candidate's promotion.* tags
    with pytest.raises(Exception):
        record(config, target, Decision("promoted", "candidate beats production"),
               Version("candidate", "candidate", new), Version("production", "production", old), "digest", {})
    assert proxy.refused
    assert client.get_model_version_by_alias("promote-outage", "production").version == old
    [run] = client.search_runs([target.experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["decision"] == "failed"


def test_registration_and_the_runs_end_are_retried_through_a_flaky_server(proxy, tiny_reference, tiny_model_dir):
    from jobs.common.registry import TextClassifierModel, classifier_signature
    from jobs.common.tracking import TrackingTarget
    from jobs.train.run_tracking import Registration, RunTracker

    client = mlflow.MlflowClient(proxy.url)
    experiment = client.get_experiment_by_name(EXPERIMENT) or client.get_experiment(
        client.create_experiment(EXPERIMENT))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    checkpoint = tiny_reference.checkpoint_path  # its last epoch's unconfirmed points replay into this run too
    request = Registration.of(python_model=TextClassifierModel(), signature=classifier_signature(False),
                              input_example=None, run_id=run_id, run_name="flaky", checkpoint=checkpoint,
                              step=int(tiny_reference.metrics["step"]), registered_model="flaky-sentiment",
                              alias="candidate")
    tracker = RunTracker(TrackingTarget(proxy.url, experiment.experiment_id, proxy.url), outage_tolerance_s=60)
    tracker.run_id = run_id
    # Refused more often than the client retries: only the job's own (bounded) retry gets through.
    proxy.refuse("/model-versions/create", times=4)
    proxy.refuse("/runs/update", times=4)
    finished = tracker.finish(request, Path(checkpoint))
    assert sum("/model-versions/create" in p for p in proxy.refused) == 4
    assert [v.version for v in client.search_model_versions("name = 'flaky-sentiment'")] == \
        [finished.registered.version]
    assert client.get_run(run_id).info.status == "FINISHED"

    failing = client.create_run(experiment.experiment_id).info.run_id
    tracker.run_id = failing
    proxy.refuse("/runs/update", times=4)
    tracker.end_failed()  # a failed fit through the same flaky server
    assert client.get_run(failing).info.status == "FAILED"
