"""MLflow plumbing shared by the jobs: where to track, run tags, system metrics, search filters.

Default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``, both
resolved to absolute paths on the driver (a Ray worker's current directory is a Ray session
folder). ``MLFLOW_TRACKING_URI`` or the job config's ``tracking_uri`` override it.

An unreachable server fails a job only before it has done any work (``check_reachable``).
After that MLflow is best-effort where work is still running and bounded where the work is
done: training buffers its metrics in its checkpoints (``jobs.train.metric_log``), and every
job waits at most ``outage_tolerance_s`` for the server at the steps that follow finished work
(``jobs.common.tracking_retry``), then says what to run once it answers.
"""

from __future__ import annotations

import os
import subprocess
import threading
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
PARENT_RUN_TAG = "mlflow.parentRunId"  # nests a run under another (the UI shows it as a child)
# Seconds between system metric samples (MLflow's own default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
# overrides it). A run shorter than one interval records none.
SYSTEM_METRICS_INTERVAL_S = 10
SYSTEM_METRICS_ENV = ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING")
# The MLflow client's own retry window; workers of an already running Ray do not see the driver's env.
CLIENT_RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")
STOP_SYSTEM_METRICS_WAIT_S = 5.0  # the sampler's last send is not worth holding a job's end for
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where the job logs to MLflow, and (training jobs) the model it registers."""
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a sqlite store in the working directory
    experiment: str = "text-jobs"  # MLflow experiment of the job's runs, created when missing
    registered_model: str | None = None  # register the trained model under this name
    alias: str = "candidate"  # alias given to the newly registered version
    # Nest the job's run under this MLflow run (its parentRunId): a sweep's trials under the sweep's run.
    parent_run_id: str | None = None
    # Artifact root of an experiment this job creates (e.g. s3://bucket/mlflow; endpoint from
    # AWS_ENDPOINT_URL). None: beside a sqlite store, or the tracking server's own default.
    # An existing experiment keeps the location it was created with.
    artifact_location: str | None = None
    check_timeout_s: float = 10.0  # an unreachable server fails the job before any compute
    # How long a job waits for an MLflow server that stopped answering once its work is done (a trained
    # checkpoint, published scores): counted from the first failed call, plus at most one client retry
    # window (MLFLOW_HTTP_REQUEST_*; ~4 min by default). Training itself never waits: it trains through
    # any outage, its metrics buffered in its checkpoints. 15 min rides out a server restart or redeploy
    # (minutes) with margin and still lets a nightly job end in its slot; past it the job says what to run.
    outage_tolerance_s: float = 900.0


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


def filter_literal(value: str, what: str) -> str:
    """``value`` as a string literal in an MLflow search filter.

    MLflow's filter grammar has no escape character: a value holding ``'`` is double-quoted, one
    holding ``"`` single-quoted; one holding both cannot be searched for, so it is refused by name.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    from jobs.common.config import ConfigError  # a setting's value: the jobs report it as one (exit 2)

    raise ConfigError(f"{what} {value!r} holds both ' and \": MLflow's search filters cannot express it; "
                      "choose one without one of them")


def tracking_env() -> dict[str, str]:
    """The driver's MLflow client settings (retry window, system metrics sampling) for workers."""
    return {key: os.environ[key] for key in (*CLIENT_RETRY_ENV, *SYSTEM_METRICS_ENV) if os.environ.get(key)}


class SystemMetrics:
    """MLflow's system-metrics sampler for one run, started and stopped without waiting for the server.

    The sampler reads the run when it is built (``resume``: its last step) and on each sample, and
    stops for good at its first failed read: during an outage a run loses system metrics, never time.
    """

    def __init__(self, target: TrackingTarget, run_id: str, node_id: str | None, resume: bool):
        self._args = (target, run_id, node_id, resume)
        self._monitor = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._start, name="system-metrics-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        target, run_id, node_id, resume = self._args
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resume,
                                           node_id=node_id, tracking_uri=target.tracking_uri)
        except Exception as exc:  # ImportError of psutil, or the store not answering
            import logging

            logging.getLogger(__name__).warning("no system metrics for run %s: %s", run_id, redact_text(str(exc)))
            return
        if not self._stopped.is_set():
            monitor.start()
            self._monitor = monitor

    def stop(self, wait_s: float = STOP_SYSTEM_METRICS_WAIT_S) -> None:
        """Stop sampling and send what it holds, waiting at most ``wait_s`` (the thread is a daemon)."""
        self._stopped.set()
        self._thread.join(timeout=wait_s)
        monitor = self._monitor
        if monitor is not None:
            finisher = threading.Thread(target=monitor.finish, name="system-metrics-stop", daemon=True)
            finisher.start()
            finisher.join(timeout=wait_s)


def start_system_metrics(target: TrackingTarget, run_id: str, node_id: str | None,
                         resume: bool = True) -> SystemMetrics:
    """Sample CPU, memory, disk, network (and GPU where nvidia-ml-py finds one) into the run's ``system/``
    metrics (``system/<node_id>/...`` with a node id) on a daemon thread; stop it with ``stop_system_metrics``.

    System metrics are worth having, not worth failing or delaying a job: psutil missing or the
    store not answering leaves a run without them.
    """
    return SystemMetrics(target, run_id, node_id, resume)


def stop_system_metrics(monitor: SystemMetrics | None) -> None:
    """Stop the sampling thread (it wakes at once) and send what it buffered, without hanging on the server."""
    if monitor is not None:
        monitor.stop()


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """``params`` as the run's params through ``client`` (MLflow takes 100 a request)."""
    from mlflow.entities import Param

    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


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
