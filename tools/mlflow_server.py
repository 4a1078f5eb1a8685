"""Run an MLflow tracking server: sqlite backend, proxied artifact store, 127.0.0.1 by default.

    python -m tools.mlflow_server --root /srv/mlflow --port 5000        # what `make mlflow-server` runs

Jobs then log with ``MLFLOW_TRACKING_URI=http://<host>:<port>``; artifacts (checkpoints'
exports, models) travel through the server (``mlflow-artifacts:/``), so nodes need no access
to its disk. Tests start the same command with :func:`start` and stop it with :func:`stop`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    root: str = "."  # holds mlflow.db and mlartifacts/ (the same files `make demo` writes)
    artifacts_destination: str | None = None  # None: <root>/mlartifacts; or e.g. s3://bucket/mlflow
    host: str = "127.0.0.1"  # another interface only behind a firewall: the server has no auth
    port: int = 5000
    allowed_hosts: str | None = None  # besides localhost and private IPs (MLflow's default), e.g. "mlflow.internal:5000"
    workers: int = 1  # one worker: ~11 s to answer and 2 processes instead of ~25 s and 15 on 2 cores

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def server_env() -> dict[str, str]:
    # MLflow 3.17 starts a job-execution runner (extra processes, slower start) unless told not to.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def server_command(config: ServerConfig) -> list[str]:
    root = Path(config.root).resolve()
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", config.artifacts_destination or str(root / "mlartifacts"),
               "--host", config.host, "--port", str(config.port), "--workers", str(config.workers)]
    if config.allowed_hosts:
        command += ["--allowed-hosts", config.allowed_hosts]
    return command


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer /health within {timeout_s:g} s")


def start(config: ServerConfig, log_path: Path, timeout_s: float = 90.0) -> subprocess.Popen:
    """Start the server in its own process group (its workers die with it) and wait for /health."""
    Path(config.root).mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(server_command(config), env=server_env(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(config.url, timeout_s, process)
    except BaseException:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop the whole process group: stopping only the leader leaves its workers serving."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or the group never looks empty
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ServerConfig()
    parser.add_argument("--root", default=defaults.root, help="folder for mlflow.db and mlartifacts/")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--allowed-hosts", default=None, help="Host headers to accept besides localhost and "
                        "private IPs, comma-separated (a DNS name such as mlflow.internal:5000)")
    parser.add_argument("--artifacts-destination", default=None, help="default: <root>/mlartifacts")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    args = parser.parse_args(argv)
    config = ServerConfig(root=args.root, host=args.host, port=args.port, allowed_hosts=args.allowed_hosts,
                          artifacts_destination=args.artifacts_destination, workers=args.workers)
    Path(config.root).mkdir(parents=True, exist_ok=True)
    command = server_command(config)
    print(f"MLflow tracking server on {config.url} (store {Path(config.root).resolve()}); "
          f"jobs: MLFLOW_TRACKING_URI={config.url}", flush=True)
    os.execve(command[0], command, server_env())  # the server replaces this process: Ctrl-C reaches it


if __name__ == "__main__":
    sys.exit(main())
