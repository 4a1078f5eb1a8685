"""A second Ray on the machine leaves a running job alone.

Seen before the fix: a job's own Ray (no dashboard) still records the default dashboard address,
127.0.0.1:8265; a notebook's ``ray.init()`` starting its dashboard there answered our training
controller's placement-group cleaner with "no such actor", the cleaner removed the training
placement group, and every worker died within seconds (``jobs.common.ray_runtime`` explains).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from jobs.common.injected_delay import DELAY_END_ENV
from jobs.train.callbacks import STEP_DELAY_ENV
from waiting import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/finetune_classifier.tiny.yaml"
DEFAULT_DASHBOARD_PORT = 8265
# The cleaner removed the placement group within six seconds of the second dashboard answering: the job
# must go on training at least this long beside it, or the test proves nothing (checked, not assumed).
EXPOSURE_S = 12.0
SECOND_RAY = """
import time, ray
ray.init(num_cpus=1)  # a notebook's Ray: its dashboard on the default port
print("second ray up", flush=True)
time.sleep(600)
"""


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _training_workers_up(job: subprocess.Popen) -> bool:
    """The job's Ray Train workers exist (its placement group is up): processes under the job's own."""
    import psutil

    try:
        return any("RayTrainWorker" in " ".join(proc.cmdline()) for proc in psutil.Process(job.pid).children(True))
    except psutil.Error:
        return False


def test_a_second_ray_with_a_dashboard_does_not_kill_a_training_job(mlflow_uri, tiny_corpus, tiny_model_dir,
                                                                    session_dir):
    if _port_open(DEFAULT_DASHBOARD_PORT):
        pytest.skip(f"port {DEFAULT_DASHBOARD_PORT} is already served here: the second Ray's dashboard "
                    "could not take the default address")
    storage, name = session_dir / "isolation-ray", "beside-a-second-ray"
    exposed = session_dir / "isolation.exposed"  # the slowed steps end once the job trained EXPOSURE_S beside it
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, STEP_DELAY_ENV: "1.0", DELAY_END_ENV: str(exposed)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "jobs.finetune_classifier", "--config", str(TINY)]
    for item in (f"data.train={tiny_corpus / 'train.parquet'}", f"data.val={tiny_corpus / 'val.parquet'}",
                 f"data.test={tiny_corpus / 'test.parquet'}", f"model.name_or_path={tiny_model_dir}",
                 f"run.storage_path={storage}", f"run.name={name}", "run.max_failures=0", "optim.epochs=3"):
        command += ["--set", item]
    log = open(session_dir / "isolation-job.log", "wb")
    job = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    second = None
    try:
        # Once the job's training workers are up, another Ray starts beside it.
        wait_for(lambda: _training_workers_up(job) or job.poll() is not None, 300, "the job's training workers")
        assert job.poll() is None, (session_dir / "isolation-job.log").read_text()[-3000:]
        second_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        second = subprocess.Popen([sys.executable, "-c", SECOND_RAY], env=second_env, start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open(DEFAULT_DASHBOARD_PORT) or job.poll() is not None, 120,
              "the second Ray's dashboard on the default port")
        dashboard_up = time.time()
        time.sleep(EXPOSURE_S)
        exposed.touch()
        code = job.wait(timeout=600)
    finally:
        for process in (job, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()
    output = (session_dir / "isolation-job.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "Cleaning up placement group" not in output
    last_checkpoint = max(p.stat().st_mtime for p in storage.glob(f"{name}/epoch-*/COMPLETE"))
    assert last_checkpoint - dashboard_up >= EXPOSURE_S, \
        f"the job trained only {last_checkpoint - dashboard_up:.1f} s beside the second dashboard"
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("finetune-tiny").experiment_id],
                              filter_string=f"tags.ray_run_name = '{name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "restarts" not in runs[0].data.tags


def test_a_job_starts_its_own_ray_even_where_another_clusters_address_is_recorded(tmp_path):
    """``ray start`` (and Ray's own simulated clusters) record their address in /tmp/ray/ray_current_cluster;
    a bare ``ray.init()`` joins that cluster, or, when it is gone, waits on it and fails."""
    import ray._private.utils as ray_utils

    recorded = Path(ray_utils.get_ray_address_file(None))
    previous = recorded.read_text() if recorded.exists() else None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(gone)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    probe = ("from jobs.common.ray_runtime import RayConfig, init_ray; init_ray(RayConfig(num_cpus=1)); "
             "import ray; print('gcs', ray.get_runtime_context().gcs_address)")
    try:
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        if previous is None:
            recorded.unlink(missing_ok=True)
        else:
            recorded.write_text(previous)
    assert done.returncode == 0, done.stderr[-2000:]
    started = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("gcs ")]
    assert started and started[0] != gone
