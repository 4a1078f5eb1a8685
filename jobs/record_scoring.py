"""Record a published batch_infer output's summary in its MLflow run: the step after the publish.

    python -m jobs.record_scoring --output <output_dir>/<run_name> [--tracking-uri <uri>]

``jobs.batch_infer`` runs ``record`` itself once its output is published; when MLflow does not
answer within ``tracking.outage_tolerance_s`` the output is complete all the same (its
``_SUCCESS`` manifest lists every file and the counts), the job exits 0 with a warning, and this
command, run once MLflow answers, writes what the run missed: the counts as metrics, the manifest
as ``scoring_manifest.json``, the description, and FINISHED. Everything comes from the manifest
(it names its MLflow run), and running it twice records the same values once.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.common.redaction import redact_text
from jobs.common.tracking import TrackingConfig, TrackingTarget, client_for, resolve_tracking_uri
from jobs.common.tracking_retry import OutageRetry, TrackingUnavailable
from jobs.scoring.recording import record


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException

    from jobs.scoring.sink import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the published output directory (holds _SUCCESS)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI")
    parser.add_argument("--outage-tolerance-s", type=float, default=TrackingConfig().outage_tolerance_s)
    args = parser.parse_args(argv)
    manifest = read_manifest(args.output)
    if manifest is None or "mlflow_run_id" not in manifest:
        print(f"record_scoring failed: no batch_infer _SUCCESS manifest at {redact_text(args.output)}",
              file=sys.stderr)
        return 1
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")))
    try:
        OutageRetry(args.outage_tolerance_s).call(
            "recording the scoring summary", lambda: record(client_for(TrackingTarget(uri, "", uri)), manifest,
                                                            args.output))
    except (TrackingUnavailable, MlflowException) as exc:
        print(f"record_scoring failed: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    print(f"MLflow run {manifest['mlflow_run_id']}: summary recorded, run FINISHED")
    return 0



if __name__ == "__main__":
    sys.exit(main())
