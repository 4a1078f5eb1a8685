"""A scheduled run's MLflow record: counts, the partitions' outcomes, the scored inputs, a description.

Written after the partitions are committed (``jobs.scoring.partitions``): an MLflow outage here is a warning,
never a change to the outcome.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from jobs.common.datasets import log_datasets, parquet_summary
from jobs.common.redaction import redact_text
from jobs.common.tracking import DESCRIPTION_TAG, TrackingTarget
from jobs.common.tracking_retry import OutageRetry
from jobs.scoring.partition_plan import Partition
from jobs.scoring.pipeline import counts_metrics

if TYPE_CHECKING:
    from jobs.scoring.partitions import RunOutcome


def record_run(target: TrackingTarget, client, result: RunOutcome, partitions: list[Partition],
                tolerance_s: float) -> bool:
    """The run's summary in MLflow, after the partitions are committed: waits at most ``tolerance_s`` for the
    server, and a failure is a warning: the outcome is in the ledger and printed, the exit status unchanged."""
    def summary() -> None:
        _log_run(client, result)
        _log_scored_inputs(client, result, partitions)
        client.set_tag(result.run_id, DESCRIPTION_TAG, _description(result)[:8000])
        if result.failed:
            client.set_tag(result.run_id, "failed_partitions", ", ".join(p.partition for p in result.failed)[:4000])
        client.set_terminated(result.run_id, "FAILED" if result.failed else "FINISHED")

    try:
        OutageRetry(tolerance_s).call("recording the run's summary", summary)
        return True
    except Exception as exc:  # noqa: BLE001 -- the partitions are committed: nothing here may change the outcome
        scored = len(result.with_status("scored"))
        print(f"WARNING: {scored} partition(s) scored and committed (listed above; the ledger under the output "
              f"root records them), but MLflow run {result.run_id} lacks its summary and stays RUNNING "
              f"({redact_text(str(exc))}). Nothing needs scoring again: the next run skips the committed "
              "partitions and records its own summary.", file=sys.stderr, flush=True)
        return False


def _log_run(client, result: RunOutcome) -> None:
    from mlflow.entities import Metric

    counts = result.totals()
    skipped = result.with_status("skipped")
    metrics = {"partitions_seen": len(result.partitions), "partitions_scored": len(result.with_status("scored")),
               "partitions_skipped": len(skipped), "partitions_busy": len(result.with_status("busy")),
               "partitions_failed": len(result.failed),
               "partitions_stale": sum(p.reason in ("stale_model", "changed_inputs") for p in skipped),
               "ledger_repaired": result.ledger_repaired, "run_seconds": result.seconds,
               **counts_metrics(counts)}
    now = int(time.time() * 1000)
    client.log_batch(result.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_dict(result.run_id, {"partitions": [asdict(p) for p in result.partitions]}, "partitions.json")


def _log_scored_inputs(client, result: RunOutcome, partitions: list[Partition]) -> None:
    """Each partition this run scored, as a "scoring" dataset of the run (named by the partition)."""
    scored = {o.partition for o in result.with_status("scored")}
    entries = []
    for partition in partitions:
        if partition.name in scored:
            try:
                entries.append((parquet_summary(partition.uri, name=partition.name), "scoring"))
            except (OSError, ValueError):  # gone or rewritten since: the manifest has what was read
                continue
    log_datasets(entries, client=client, run_id=result.run_id)


def _description(result: RunOutcome) -> str:
    counts = result.totals()
    by_status = ", ".join(f"{len(result.with_status(s))} {s}" for s in ("scored", "skipped", "busy", "failed"))
    return (f"**score_partitions**: `{result.model_name}` version {result.model_version}; "
            f"{len(result.partitions)} partition(s): {by_status}.\n\n"
            f"Rows: {counts.rows_in:,} in, {counts.rows_out:,} written, {counts.rows_rejected:,} rejected.")

