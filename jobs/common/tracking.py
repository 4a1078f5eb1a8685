"""MLflow plumbing shared by the jobs: where to track, run tags, and rank-0 metric logging.

Default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``, both
resolved to absolute paths on the driver (a Ray worker's current directory is a Ray session
folder). ``MLFLOW_TRACKING_URI`` or the job config's ``tracking_uri`` override it.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.common.redaction import redact_text

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# The experiment tag MLflow's UI reads to choose its view; without it an experiment opens in the GenAI view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description (markdown) on its page
# Seconds between system metric samples (MLflow's own default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
# overrides it). A run shorter than one interval records none.
SYSTEM_METRICS_INTERVAL_S = 10
SYSTEM_METRICS_ENV = ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a sqlite store in the working directory
    experiment: str = "text-jobs"
    registered_model: str | None = None  # register the trained model under this name
    alias: str = "candidate"  # alias given to the newly registered version
    # Artifact root of an experiment this job creates (e.g. s3://bucket/mlflow; endpoint from
    # AWS_ENDPOINT_URL). None: beside a sqlite store, or the tracking server's own default.
    # An existing experiment keeps the location it was created with.
    artifact_location: str | None = None
    check_timeout_s: float = 10.0  # an unreachable server fails the job before any compute


@dataclass(frozen=True)
class TrackingTarget:
    """Resolved, absolute tracking location; safe to ship to Ray workers."""
    tracking_uri: str
    experiment_id: str
    registry_uri: str


def resolve_tracking_uri(config: TrackingConfig) -> str:
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path(DEFAULT_DB).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:  # a bare folder path: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def check_reachable(uri: str, timeout_s: float) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    # /health needs no login (also under basic-auth), and urllib cannot send credentials from the URI:
    # with them left in, it fails on "user:password@host" as a port and puts the password in its message
    parts = urllib.parse.urlsplit(uri)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/") + "/health",
                                   "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                raise ConnectionError(f"status {response.status}")
    except (OSError, urllib.error.URLError, ConnectionError) as exc:
        raise RuntimeError(f"MLflow tracking server {redact_text(uri)} is unreachable ({redact_text(str(exc))}); "
                           "start it or set MLFLOW_TRACKING_URI, nothing was run") from None


def prepare_tracking(config: TrackingConfig) -> TrackingTarget:
    """Resolve the store, check it answers, and get or create the experiment."""
    import mlflow

    uri = resolve_tracking_uri(config)
    check_reachable(uri, config.check_timeout_s)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # one made before this tag, or by another tool
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        wanted = config.artifact_location
        if wanted and experiment.artifact_location.rstrip("/") != wanted.rstrip("/"):
            raise ValueError(f"MLflow experiment {config.experiment!r} keeps its artifacts at "
                             f"{redact_text(experiment.artifact_location)}, not tracking.artifact_location "
                             f"{redact_text(wanted)}: "
                             "an experiment's artifact root cannot change; name another experiment")
    else:
        artifact_location = config.artifact_location
        # keep artifacts beside the database, not in the cwd of whoever runs
        if artifact_location is None and uri.startswith("sqlite:///"):
            artifact_location = (Path(uri[len("sqlite:///"):]).parent / DEFAULT_ARTIFACTS).as_uri()
        experiment_id = client.create_experiment(config.experiment, artifact_location=artifact_location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    return TrackingTarget(tracking_uri=uri, experiment_id=experiment_id, registry_uri=uri)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    import ray
    import torch
    import transformers

    return {"git_commit": git_commit(), "ray_version": ray.__version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}


def client_for(target: TrackingTarget):
    import mlflow

    return mlflow.MlflowClient(target.tracking_uri, target.registry_uri)


def start_system_metrics(target: TrackingTarget, run_id: str, node_id: str | None, resume: bool = True):
    """Sample CPU, memory, disk, network (and GPU where nvidia-ml-py finds one) into the run's ``system/``
    metrics (``system/<node_id>/...`` with a node id) on a daemon thread; stop it with ``stop_system_metrics``.

    None where it cannot run (psutil missing): system metrics are worth having, not worth failing a job.
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resume,
                                       node_id=node_id, tracking_uri=target.tracking_uri)
    except Exception as exc:  # ImportError of psutil, or the store not answering
        import logging

        logging.getLogger(__name__).warning("no system metrics for run %s: %s", run_id, redact_text(str(exc)))
        return None
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop the sampling thread (it wakes at once) and send what it buffered."""
    if monitor is not None:
        monitor.finish()


def system_metrics_env() -> dict[str, str]:
    """MLflow's sampling settings from the driver's environment, for workers that do not inherit it."""
    return {key: os.environ[key] for key in SYSTEM_METRICS_ENV if os.environ.get(key)}


def set_description(target: TrackingTarget, run_id: str, markdown: str) -> None:
    """The run's description (its page's "Description" box): at most MLflow's tag value limit."""
    client_for(target).set_tag(run_id, DESCRIPTION_TAG, markdown[:8000])


def metrics_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A markdown table: one row per model or baseline, one column per metric (blank where absent)."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for title, values in rows.items():
        cells = [f"{values[c]:.4f}" if c in values else "" for c in columns]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class MetricLog:
    """Rank-0 metric logger that sends buffered metrics in one batch at each checkpoint.

    Buffering until a checkpoint keeps the MLflow history aligned with what a restart resumes
    from; ``skip_through_step`` drops points a previous attempt already logged, so a step is
    never logged twice whatever restarts happened.
    """

    def __init__(self, target: TrackingTarget, run_id: str, enabled: bool):
        self.run_id = run_id
        self.enabled = enabled
        self._client = client_for(target) if enabled else None
        self._pending: list[Any] = []
        self.skip_through_step = -1

    def resume_after(self, metric_key: str) -> int:
        """Highest step of ``metric_key`` already in the run (-1 when none)."""
        if not self.enabled:
            return -1
        history = self._client.get_metric_history(self.run_id, metric_key)
        self.skip_through_step = max((m.step for m in history), default=-1)
        return self.skip_through_step

    def record_restart(self, resumed_step: int) -> None:
        """After a restart: skip points already logged and count the restart on the run."""
        if not self.enabled:
            return
        self.resume_after("train_loss")
        tags = self._client.get_run(self.run_id).data.tags
        restarts = int(tags.get("restarts", "0")) + 1
        steps = [s for s in tags.get("resumed_from_steps", "").split(",") if s] + [str(resumed_step)]
        self._client.set_tag(self.run_id, "restarts", str(restarts))
        self._client.set_tag(self.run_id, "resumed_from_steps", ",".join(steps))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled or step <= self.skip_through_step:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())

    def flush(self) -> None:
        if not self.enabled or not self._pending:
            return
        for start in range(0, len(self._pending), 1000):  # MLflow's per-request metric limit
            self._client.log_batch(self.run_id, metrics=self._pending[start:start + 1000])
        self._pending = []
