"""A real `mlflow server` for a test module that can be stopped and started again on the same store."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from tools import mlflow_server


def point_mlflow_back_at_the_session_store() -> None:
    """Jobs set MLflow's process-wide tracking and registry URIs to their server: a module that ran jobs
    against the session's shared server points them back, so a later module's default client cannot
    find that (still running) server by accident."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StoppableServer:
    """One store and one port; ``stop`` and ``start`` as often as a fault needs (a start takes ~11 s here).

    A fault thread and a fixture may both call them: one at a time, so no second server is started.
    """

    def __init__(self, root: Path):
        self.root = root
        self.config = mlflow_server.ServerConfig(root=str(root / "store"), port=free_port())
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.config.url

    def start(self) -> None:
        with self._lock:
            if self.process is None:
                self.process = mlflow_server.start(self.config, self.root / "server.log")

    def stop(self) -> None:
        with self._lock:
            if self.process is not None:
                mlflow_server.stop(self.process)
                self.process = None
