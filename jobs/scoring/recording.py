"""A published batch_infer output's summary in its MLflow run: the step after the publish.

``jobs.batch_infer`` runs ``record`` itself once its output is published; when MLflow does not
answer within ``tracking.outage_tolerance_s`` the output is complete all the same (its
``_SUCCESS`` manifest lists every file and the counts), the job exits 0 with a warning, and
``python -m jobs.record_scoring``, run once MLflow answers, writes what the run missed: the counts as
metrics, the manifest as ``scoring_manifest.json``, the description, and FINISHED. Everything comes from the manifest
(it names its MLflow run), and running it twice records the same values once.
"""

from __future__ import annotations

import calendar
import sys
import time

from jobs.common.redaction import redact_text
from jobs.common.tracking import DESCRIPTION_TAG, TrackingTarget, client_for
from jobs.common.tracking_retry import OutageRetry, TrackingUnavailable
from jobs.scoring.pipeline import PipelineCounts, counts_metrics

MANIFEST_ARTIFACT = "scoring_manifest.json"


def _timestamp_ms(manifest: dict) -> int:
    """The commit time: a repeated record logs identical points, which MLflow stores once."""
    try:
        return calendar.timegm(time.strptime(manifest["committed_at"], "%Y-%m-%dT%H:%M:%SZ")) * 1000
    except (KeyError, TypeError, ValueError):
        return 0


def summary_of(manifest: dict) -> tuple[PipelineCounts, int, int]:
    """The run's counts, and the chunks and rows an earlier attempt of the same run_name committed."""
    counts = PipelineCounts(rows_in=manifest["rows_in"], rows_out=manifest["rows_out"],
                            rows_rejected=manifest["rows_rejected"],
                            rejected_by_reason=manifest.get("rejected_by_reason", {}),
                            files=manifest.get("files", []), seconds=float(manifest.get("seconds", 0.0)),
                            unreadable=tuple(manifest.get("unreadable_files", [])))
    resumed = [c for c in manifest.get("chunks", []) if c.get("scored_by") != manifest.get("mlflow_run_id")]
    return counts, len(resumed), sum(c.get("rows_in", 0) for c in resumed)


def record(client, manifest: dict, output: str) -> None:
    """Counts, manifest, description and FINISHED into the manifest's MLflow run (idempotent)."""
    from mlflow.entities import Metric

    run_id = manifest["mlflow_run_id"]
    counts, chunks_resumed, rows_resumed = summary_of(manifest)
    now = _timestamp_ms(manifest)
    metrics = {**counts_metrics(counts), "chunks_resumed": chunks_resumed, "rows_resumed": rows_resumed}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_dict(run_id, manifest, MANIFEST_ARTIFACT)
    model = manifest.get("model", {})
    client.set_tag(run_id, DESCRIPTION_TAG, (
        f"**batch_infer**: `{model.get('name')}` version {model.get('version')} scored "
        f"`{redact_text(str(manifest.get('source')))}`: {counts.rows_in:,} rows in, {counts.rows_out:,} written, "
        f"{counts.rows_rejected:,} rejected ({chunks_resumed} chunk(s) resumed).\n\n"
        f"Output: `{redact_text(output)}`")[:8000])
    client.set_terminated(run_id, "FINISHED")


def record_command(output: str, tracking_uri: str) -> str:
    import shlex

    parts = [sys.executable or "python", "-m", "jobs.record_scoring", "--output", output]
    if redact_text(tracking_uri) == tracking_uri:  # one with credentials comes from MLFLOW_TRACKING_URI instead
        parts += ["--tracking-uri", tracking_uri]
    return " ".join(shlex.quote(p) for p in parts)


def record_published(target: TrackingTarget, manifest: dict, output: str, tolerance_s: float) -> bool:
    """``record`` after a publish, waiting at most ``tolerance_s`` for MLflow; a warning, never an error.

    False when it could not: the warning says the output is complete and what to run once MLflow answers.
    """
    try:
        OutageRetry(tolerance_s).call("recording the scoring summary",
                                      lambda: record(client_for(target), manifest, output))
        return True
    except Exception as exc:  # noqa: BLE001 -- the output is published: nothing here may fail the run
        reason = str(exc) if isinstance(exc, TrackingUnavailable) else f"{type(exc).__name__}: {exc}"
        print(f"WARNING: the output is complete and published at {redact_text(output)} (its _SUCCESS manifest "
              f"lists every file and the counts), but its MLflow run {manifest.get('mlflow_run_id')} lacks the "
              f"summary and stays RUNNING ({redact_text(reason)}). Nothing needs scoring again; once MLflow "
              f"answers, record the summary with:\n  {redact_text(record_command(output, target.tracking_uri))}",
              file=sys.stderr, flush=True)
        return False
