"""The MLflow tracking server (`make mlflow-server`) and what a job does when it cannot reach one.

No Ray here: the server is a real `mlflow server` process group, the failing job a real CLI run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import mlflow_server

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_stores_runs_in_sqlite_and_proxies_artifacts(tmp_path: Path):
    import mlflow

    config = mlflow_server.ServerConfig(root=str(tmp_path / "store"), port=_closed_port())
    command = mlflow_server.server_command(config)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    process = mlflow_server.start(config, tmp_path / "server.log")
    try:
        client = mlflow.MlflowClient(config.url)
        experiment_id = client.create_experiment("server-check")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        (tmp_path / "note.txt").write_text("over http")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.info.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # clients never write the server's disk
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
    finally:
        mlflow_server.stop(process)
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # no worker of the server outlived it
    stored = list((tmp_path / "store" / "mlartifacts").rglob("note.txt"))
    assert [p.read_text() for p in stored] == ["over http"]
    assert (tmp_path / "store" / "mlflow.db").stat().st_size > 0


def test_job_with_unreachable_tracking_server_fails_before_any_compute(tiny_corpus: Path, tiny_model_dir: Path,
                                                                       tmp_path: Path):
    port = _closed_port()
    storage = tmp_path / "ray-runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "jobs.finetune_classifier", "--config", "configs/finetune_classifier.tiny.yaml",
         "--set", f"data.train={tiny_corpus}/train.parquet", "--set", f"data.val={tiny_corpus}/val.parquet",
         "--set", f"data.test={tiny_corpus}/test.parquet", "--set", f"model.name_or_path={tiny_model_dir}",
         "--set", f"run.storage_path={storage}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    output = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in output, output[-2000:]
    assert "nothing was run" in output
    # Failed before Ray: no local Ray started, no Ray Train run folder, no checkpoint.
    assert "Started a local Ray instance" not in output and "TorchTrainer" not in output
    assert not storage.exists()
    assert seconds < 60, f"took {seconds:.0f} s to give up"
