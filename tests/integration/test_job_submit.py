"""`ray job submit` end to end: a real Ray head (job server, token auth) and a real MLflow server.

The module starts ``ray start --head`` on 127.0.0.1 with its own ports, temp dir and token, and
``python -m tools.mlflow_server`` (what ``make mlflow-server`` runs), then submits the jobs the
way docs/cluster.md's "Deploy on a cluster" does: ``--working-dir .`` with deploy/runtime_env.yaml's
excludes and env vars, ``-- python -m jobs.<name> --config configs/<tiny>.yaml --set ...``.
Each job must end SUCCEEDED and leave its MLflow run (queried over HTTP) and its outputs.
The jobs' drivers run the head's Python (this virtualenv), as cluster nodes run the image's
Python with the project installed by cluster.yaml: the runtime env needs no pip section.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tools import mlflow_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
MIB = 1024 * 1024
REGISTERED = "submit-tiny"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MLFLOW_DISABLE_TELEMETRY": "true",
                "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    env.update(extra)
    return env


class RayHead:
    """``ray start --head --block`` in its own session; stopped through its own processes only."""

    def __init__(self, work: Path):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: socket paths have a limit
        self.token = uuid.uuid4().hex
        (gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node_manager,
         object_manager) = _free_ports(9)
        self.address = f"http://127.0.0.1:{dashboard}"
        # Token auth stated explicitly (Ray 2.60 would also switch it on by itself when
        # ~/.ray/auth_token exists); this head's token is its own, not the user's file.
        self.env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        command = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                   "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "true",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                   "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
                   "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
                   "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
                   "--object-manager-port", str(object_manager), "--temp-dir", str(self.temp_dir),
                   "--disable-usage-stats"]
        self.log_path = work / "ray-head.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=self.env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        request = urllib.request.Request(f"{self.address}/api/version",
                                         headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"Ray job server did not answer in {timeout_s:g} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        import psutil

        # SIGTERM to `ray start --block` stops the processes it started; then the group, then
        # stragglers of this head only: processes whose command line names its temp dir.
        for sig, wait_s in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        mine = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or []):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for proc in mine:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(mine, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], cwd=REPO, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout_s)


@pytest.fixture(scope="module")
def work() -> Path:
    path = Path(tempfile.mkdtemp(prefix="text-jobs-submit-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def services(work: Path):
    """The Ray head and the MLflow server, started side by side (each takes 10-20 s on 2 cores)."""
    head = RayHead(work)
    tracking = mlflow_server.ServerConfig(root=str(work / "mlflow"), port=_free_ports(1)[0])
    server = None
    try:
        server = mlflow_server.start(tracking, work / "mlflow-server.log")
        head.wait_ready()
        yield head, tracking
    finally:
        head.stop()
        if server is not None:
            mlflow_server.stop(server)


def _runtime_env(tracking_uri: str) -> dict:
    """deploy/runtime_env.yaml with this test's tracking server (docs/cluster.md passes the file itself)."""
    env = yaml.safe_load((REPO / "deploy/runtime_env.yaml").read_text())
    env["env_vars"]["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


class Submitted:
    def __init__(self, head: RayHead, tracking_uri: str):
        self.head = head
        self.runtime_env = json.dumps(_runtime_env(tracking_uri))
        self.results: dict[str, dict] = {}

    def submit(self, job: str, *args: str, timeout_s: float = 240) -> dict:
        submission_id = f"{job}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        out = self.head.cli("job", "submit", "--address", self.head.address, "--submission-id", submission_id,
                            "--working-dir", ".", "--runtime-env-json", self.runtime_env,
                            "--", "python", "-m", f"jobs.{job}", *args, timeout_s=timeout_s)
        seconds = time.monotonic() - started
        status = self.head.cli("job", "status", "--address", self.head.address, submission_id)
        result = {"id": submission_id, "rc": out.returncode, "output": out.stdout + out.stderr,
                  "status": status.stdout + status.stderr, "seconds": seconds}
        print(f"{job}: rc {out.returncode} in {seconds:.1f} s")
        self.results[job] = result
        return result


@pytest.fixture(scope="module")
def submitted(services, work: Path) -> Submitted:
    """Corpus -> debug-size model -> 2-worker fine-tune -> batch scoring, each one `ray job submit`."""
    head, tracking = services
    jobs = Submitted(head, tracking.url)
    corpus = work / "corpus"
    jobs.submit("prepare_corpus", "--config", "configs/prepare_corpus.yaml",
                "--set", "split.limit_per_label=40", "--set", f"output_dir={corpus}",
                "--set", "seq2seq.enabled=false")  # the pinyin pairs' news source is not limited: ~1 min more
    jobs.submit("init_offline_model", "--config", "configs/init_offline_model.yaml",
                "--set", "architecture=configs/model/bert-debug.json", "--set", f"labels_file={corpus}/labels.json",
                "--set", f"output_dir={work}/bert-debug")
    jobs.submit("finetune_classifier", "--config", "configs/finetune_classifier.tiny.yaml",
                "--set", f"data.train={corpus}/train.parquet", "--set", f"data.val={corpus}/val.parquet",
                "--set", f"data.test={corpus}/test.parquet", "--set", f"model.name_or_path={work}/bert-debug",
                "--set", "optim.epochs=1", "--set", f"run.storage_path={work}/ray-runs",
                "--set", f"tracking.registered_model={REGISTERED}")
    jobs.submit("batch_infer", "--config", "configs/batch_infer.local-cpu.yaml",
                "--set", f"input.path={corpus}/test.parquet", "--set", f"output_dir={work}/scores",
                "--set", f"model=models:/{REGISTERED}@candidate", "--set", "max_length=64",
                "--set", "stages.min_blocks=2")
    return jobs


def _succeeded(jobs: Submitted, job: str) -> dict:
    result = jobs.results[job]
    logs = jobs.head.cli("job", "logs", "--address", jobs.head.address, result["id"])
    detail = f"{result['output'][-3000:]}\n--- ray job logs ---\n{logs.stdout[-3000:]}"
    assert result["rc"] == 0, f"{job} failed:\n{detail}"
    # `ray job status` reports a SUCCEEDED job as "Job '<id>' succeeded" (coloured on a terminal)
    assert f"Job '{result['id']}' succeeded" in _plain(result["status"]), f"{job}: {result['status']}\n{detail}"
    return result


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _client(services):
    import mlflow

    _, tracking = services
    return mlflow.MlflowClient(tracking.url, tracking.url)


def _only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} on the server"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_job_server_refuses_a_client_without_the_token(services):
    head, _ = services

    def refused(env: dict[str, str]) -> bool:
        out = head.cli("job", "list", "--address", head.address, env=env)
        return out.returncode != 0 and ("401" in out.stdout + out.stderr or "uthenticat" in out.stdout + out.stderr)

    assert refused(_clean_env(RAY_AUTH_MODE="disabled"))
    # Ray 2.60's `ray job` client sends a token only under RAY_AUTH_MODE=token, even when one is set.
    assert refused(_clean_env(RAY_AUTH_TOKEN=head.token))
    assert head.cli("job", "list", "--address", head.address).returncode == 0


def test_prepare_corpus_job(submitted, services, work: Path):
    _succeeded(submitted, "prepare_corpus")
    rows = {split: pq.read_table(work / "corpus" / f"{split}.parquet").num_rows for split in ("train", "val", "test")}
    assert sum(rows.values()) == 80 and all(rows.values())
    run = _only_run(_client(services), "prepare-corpus")
    assert run.info.status == "FINISHED"
    assert run.data.params["split.limit_per_label"] == "40"


def test_init_offline_model_job(submitted, work: Path):
    _succeeded(submitted, "init_offline_model")
    config = json.loads((work / "bert-debug" / "config.json").read_text())
    assert config["hidden_size"] == 32  # the debug architecture named with --set
    assert any((work / "bert-debug").glob("*.safetensors"))


def test_finetune_job_logs_registers_and_stores_artifacts_through_the_server(submitted, services, work: Path):
    _succeeded(submitted, "finetune_classifier")
    client = _client(services)
    run = _only_run(client, "finetune-tiny")
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert client.get_metric_history(run.info.run_id, "train_loss"), "rank 0 logged no steps over HTTP"
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert version.run_id == run.info.run_id
    # Proxied artifact store: the client sent the model over HTTP, the server wrote it to its disk.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list((work / "mlflow" / "mlartifacts").rglob("MLmodel"))
    assert stored, "no model files under the server's --artifacts-destination"
    assert (work / "ray-runs").is_dir()


def test_batch_infer_job_scores_every_row(submitted, services, work: Path):
    _succeeded(submitted, "batch_infer")
    test_ids = pq.read_table(work / "corpus" / "test.parquet").column("id").to_pylist()
    parts = [p for p in (work / "scores").rglob("*.parquet") if "_rejected" not in p.parts]
    scored = pa.concat_tables(pq.read_table(p) for p in parts)
    assert sorted(scored.column("id").to_pylist()) == sorted(test_ids)
    assert set(scored.column("model_name").to_pylist()) == {REGISTERED}
    run = _only_run(_client(services), "batch-infer")
    assert run.data.metrics["rows_in"] == run.data.metrics["rows_out"] == len(test_ids)


def test_uploaded_working_dir_is_the_code_only(submitted, services):
    """What the job server received (unpacked in the head's session dir), measured."""
    head, _ = services
    packages = [p for p in head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
                if p.is_dir()]
    assert packages, "no working_dir package on the head"
    for package in packages:
        files = [p for p in package.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        print(f"uploaded working dir {package.name}: {len(files)} files, {size / MIB:.2f} MiB")
        assert size < 10 * MIB
        top = {p.relative_to(package).parts[0] for p in files}
        assert {"jobs", "configs", "model", "data_pipeline"} <= top
        assert not top & {".venv", "data", "runs", "artifacts", "mlartifacts", "mlflow.db", ".git"}
