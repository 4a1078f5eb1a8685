"""Finish a training run whose end-of-run MLflow steps were left undone: replay, register, end the run.

    python -m jobs.register_checkpoint --checkpoint <uri> --run-id <id> [--tracking-uri <uri>]

A training job prints this line (with its own checkpoint and run) when training finished but
MLflow did not answer within ``tracking.outage_tolerance_s``. It runs the job's own end-of-run
steps (``jobs.train.run_tracking.RunTracker.finish``) from what the job saved beside its
checkpoints (``registration.json``): the metrics the final checkpoint carries that MLflow never
received, replayed exactly once; the checkpoint's exported model logged, registered and aliased;
the kept checkpoints as logged models; the description; the run FINISHED. Running it again
registers nothing twice: it reports the version it registered.

Without ``registration.json`` (the storage refused it) the export is registered with the
``--registered-model`` / ``--alias`` given, as the model kind of the export (classifier or seq2seq),
without version tags or description. The tracking URI defaults to ``MLFLOW_TRACKING_URI``.
Exit 0 when the run is finished, 1 when it could not be (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from data_pipeline.paths import filesystem_for
from jobs.common.redaction import redact_text
from jobs.common.tracking import TrackingConfig, TrackingTarget, resolve_tracking_uri
from jobs.train.checkpoint import COMPLETE_MARKER, EXPORT_DIR
from jobs.train.run_tracking import Registration, RunTracker, TrackingIncomplete


@contextmanager
def local_checkpoint(checkpoint: str):
    """The checkpoint as a local directory: itself, or a download of it."""
    filesystem, path = filesystem_for(checkpoint)
    if "://" not in checkpoint:
        yield Path(path)
        return
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="checkpoint-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
        yield Path(tmp)


def fallback_registration(checkpoint: str, directory: Path, args) -> Registration:
    """What the flags and the export itself say, when the job could not save its registration request."""
    from jobs.common.registry import model_kind
    from jobs.kinds import kind_spec

    if args.run_id is None:
        raise ValueError(f"no registration.json beside {checkpoint}: give --run-id (the job's message has it)")
    marker = json.loads((directory / COMPLETE_MARKER).read_text())
    model, signature, example = kind_spec(model_kind(directory / EXPORT_DIR) or "classifier").pyfunc()
    return Registration.of(python_model=model, signature=signature, input_example=example, run_id=args.run_id,
                           run_name="", checkpoint=checkpoint, step=int(marker["step"]),
                           registered_model=args.registered_model, alias=args.alias)


def finish(args) -> int:
    import mlflow

    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    checkpoint = args.checkpoint.rstrip("/")
    with local_checkpoint(checkpoint) as directory:
        if not (directory / COMPLETE_MARKER).is_file():
            raise ValueError(f"{checkpoint} is not a complete training checkpoint (no {COMPLETE_MARKER} marker)")
        request = Registration.load(checkpoint) or fallback_registration(checkpoint, directory, args)
        if args.run_id and args.run_id != request.run_id:
            raise ValueError(f"--run-id {args.run_id} is not the run of this checkpoint ({request.run_id})")
        tracker = RunTracker(TrackingTarget(uri, "", uri), args.outage_tolerance_s)  # finish reads the experiment
        tracker.run_id = request.run_id
        finished = tracker.finish(request, directory)
    registered = finished.registered
    print(f"\n=== run {request.run_id} finished ===")
    if registered.name:
        state = "registered before, not again" if finished.already_registered else f"alias @{registered.alias}"
        print(f"registered model: {registered.name} version {registered.version} ({state})")
    else:
        print(f"logged model    : {registered.model_uri}")
    print(f"checkpoint      : {redact_text(checkpoint)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the checkpoint the training job named (URI or path)")
    parser.add_argument("--run-id", help="the training run's MLflow run id (checked against registration.json)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI")
    parser.add_argument("--registered-model", help="only without registration.json")
    parser.add_argument("--alias", default="candidate", help="only without registration.json")
    parser.add_argument("--outage-tolerance-s", type=float, default=TrackingConfig().outage_tolerance_s,
                        help="how long to wait for an MLflow server that does not answer")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:
        return finish(args)
    except (TrackingIncomplete, ValueError, FileNotFoundError, MlflowException) as exc:
        print(f"\nregister_checkpoint failed: {redact_text(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
