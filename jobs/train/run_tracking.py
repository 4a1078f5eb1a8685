"""The driver's side of a training run's MLflow tracking: one object from the claim to the end.

``RunTracker`` owns one client, the run's claim (``jobs.train.run_claim``) and the outage retry
(``jobs.common.tracking_retry``, bounded by ``tracking.outage_tolerance_s``). It opens the run
(new, or the one a rerun of the same ``run.name`` resumes), ends it FAILED when training fails,
and after a successful fit runs the end-of-run steps of a ``Registration``:

1. replay what the final checkpoint carries that MLflow had not confirmed (each point exactly
   once: ``jobs.common.metric_buffer``);
2. log the final checkpoint's export as the run's model, register it and point the alias at it,
   once per checkpoint: a rerun of a finished run finds the version it registered, reports it,
   and registers nothing and moves no alias;
3. each kept epoch checkpoint as a logged model; 4. the description; 5. FINISHED, claim released.

Every step is retried while MLflow does not answer, for at most ``outage_tolerance_s`` of one
outage. When that runs out, the steps are saved beside the checkpoints (``registration.json``)
and ``TrackingIncomplete`` gives the one command that runs the rest once MLflow answers
(``python -m jobs.register_checkpoint --checkpoint <uri> ...``); until then the run stays RUNNING
and its claim lapses, so a rerun of the name is not refused. A failed fit that cannot be marked
FAILED within the tolerance is reported and left RUNNING the same way.
"""

from __future__ import annotations

import importlib
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.paths import filesystem_for, join_path
from jobs.common import config as config_lib
from jobs.common.datasets import log_datasets
from jobs.common.metric_buffer import MetricBuffer
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.registry import (SOURCE_CHECKPOINT_TAG, RegisteredModel, describe_version, find_logged_model,
                                  find_registered_version, log_pyfunc, register_version)
from jobs.common.tracking import DESCRIPTION_TAG, TrackingTarget, client_for, log_params
from jobs.common.tracking_retry import OutageRetry, TrackingUnavailable, first_line
from jobs.train.checkpoint import EXPORT_DIR
from jobs.train.run_claim import SETTLE_S, RunClaim, RunNameTaken, release_tags
from jobs.train.run_record import model_card, registration_line

log = logging.getLogger(__name__)

REQUEST_FILE = "registration.json"  # beside the run's checkpoints, when the end-of-run steps are left undone


class TrackingIncomplete(RuntimeError):
    """Training finished and its checkpoint is complete, but MLflow did not answer for the end-of-run steps."""


# ---------------------------------------------------------------- what registering a checkpoint needs

def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _instance_of(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)()


def _example_to_json(example: Any) -> dict | None:
    import pandas as pd

    if example is None:
        return None
    frame, params = example if isinstance(example, tuple) else (example, None)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"input example of type {type(frame).__name__}: a DataFrame (and params) is expected")
    return {"frame": frame.to_dict(orient="list"), "params": params}


def _example_from_json(data: dict | None) -> Any:
    import pandas as pd

    if data is None:
        return None
    frame = pd.DataFrame(data["frame"])
    return (frame, data["params"]) if data.get("params") is not None else frame


@dataclass(frozen=True, kw_only=True)
class Registration:
    """The end-of-run steps of one training run: everything they need, without the job's config."""
    run_id: str
    run_name: str
    checkpoint: str  # URI of the final checkpoint: its export is the registered model
    step: int  # the run's step of that checkpoint: its metrics are attached to the logged model
    registered_model: str | None
    alias: str | None
    version_tags: dict[str, str] = field(default_factory=dict)
    description: str = ""  # the run's description without its registration line
    what_it_is: str = ""  # one paragraph on what the job's models are (run_record.what_it_is)
    pyfunc: str = "jobs.common.registry:TextClassifierModel"  # module:class of the PythonModel
    signature: dict | None = None  # ModelSignature.to_dict()
    input_example: dict | None = None
    checkpoints: list[dict] = field(default_factory=list)  # kept ones: {"uri", "epoch", "step", "keys"}

    @classmethod
    def of(cls, *, python_model: Any, signature: Any, input_example: Any, **fields) -> "Registration":
        return cls(pyfunc=_class_path(python_model), signature=signature.to_dict() if signature else None,
                   input_example=_example_to_json(input_example), **fields)

    def python_model(self) -> Any:
        return _instance_of(self.pyfunc)

    def model_signature(self):
        from mlflow.models import ModelSignature

        return ModelSignature.from_dict(self.signature) if self.signature else None

    def example(self) -> Any:
        return _example_from_json(self.input_example)

    @property
    def run_folder(self) -> str:
        return self.checkpoint.rstrip("/").rsplit("/", 1)[0]

    def save(self) -> str:
        """Beside the checkpoints (the run folder); returns the file's URI."""
        uri = join_path(self.run_folder, REQUEST_FILE)
        filesystem, path = filesystem_for(uri)
        with filesystem.open_output_stream(path) as out:  # one PUT, or one small local write
            out.write(json.dumps(asdict(self), indent=1, ensure_ascii=False).encode())
        return uri

    @classmethod
    def load(cls, checkpoint: str) -> "Registration | None":
        uri = join_path(checkpoint.rstrip("/").rsplit("/", 1)[0], REQUEST_FILE)
        filesystem, path = filesystem_for(uri)
        try:
            with filesystem.open_input_stream(path) as handle:
                data = json.loads(handle.read().decode())
        except FileNotFoundError:
            return None
        return cls(**data) if data.get("checkpoint") == checkpoint else None


def finish_command(request: Registration, tracking_uri: str, saved: bool) -> str:
    """The one line that runs the end-of-run steps left undone (``jobs.register_checkpoint``)."""
    parts = [sys.executable or "python", "-m", "jobs.register_checkpoint",
             "--checkpoint", request.checkpoint, "--run-id", request.run_id]
    if redact_text(tracking_uri) == tracking_uri:  # a URI with credentials comes from MLFLOW_TRACKING_URI instead
        parts += ["--tracking-uri", tracking_uri]
    if not saved:  # the storage refused registration.json: the essentials on the command line
        parts += [*(["--registered-model", request.registered_model] if request.registered_model else []),
                  *(["--alias", request.alias] if request.alias else [])]
    return " ".join(shlex.quote(p) for p in parts)


@dataclass(frozen=True)
class Finished:
    registered: RegisteredModel
    already_registered: bool  # a rerun of a finished run: the version it registered before


# ---------------------------------------------------------------- the tracker

class RunTracker:
    """One training run's MLflow tracking on the driver: one client, one claim, bounded waits."""

    def __init__(self, target: TrackingTarget, outage_tolerance_s: float):
        self.target = target
        self.client = client_for(target)
        self.retry = OutageRetry(outage_tolerance_s)
        self.claim: RunClaim | None = None
        self.run_id: str | None = None

    # ------------------------------------------------------------ start

    def open(self, name: str, tags: dict[str, str], config_dict: dict[str, Any], params: dict[str, Any],
             dicts: dict[str, Any], baselines: dict[str, float], datasets,
             generated_name: bool = False) -> tuple[str, bool]:
        """Claim the run of ``name`` (new, or the one a rerun resumes); ``(run_id, resumed)``.

        The claim is written, not yet verified: ``confirm_claim()`` does that before the run is
        trained, so that the settle wait of a named run overlaps the driver's work in between.
        ``generated_name``: this launcher made the name up (no other launcher can race for it).
        MLflow answered ``prepare_tracking`` moments ago, so these calls are not retried: a job that
        cannot open its run fails before any compute. A new run gets the flattened config and
        ``params`` as params, ``dicts`` as JSON artifacts, the baselines as metrics and its input
        datasets; a resumed run already has them (MLflow params are immutable).
        """
        from mlflow.entities import Metric

        self.claim = RunClaim(self.client, self.target.experiment_id, name,
                              settle_s=0.0 if generated_name else SETTLE_S)
        self.run_id, resumed = self.claim.acquire(tags, confirm=False)
        try:
            if not resumed:
                log_params(self.client, self.run_id, redact_mapping({**config_lib.flatten(config_dict), **params}))
                for artifact, payload in dicts.items():
                    self.client.log_dict(self.run_id, payload, artifact)
                now = int(time.time() * 1000)
                self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in baselines.items()])
                log_datasets(datasets or [], client=self.client, run_id=self.run_id)
        except BaseException:
            self.end_failed(quick=True)
            raise
        return self.run_id, resumed

    def confirm_claim(self) -> None:
        """Verify the claim ``open`` wrote (raises ``RunNameTaken`` when a rival won), then keep it live."""
        self.claim.confirm()
        self.claim.start_heartbeat()

    # ------------------------------------------------------------ failure

    def end_failed(self, quick: bool = False) -> None:
        """The run FAILED and its claim released; ``quick``: one try (an interrupt, or before any work).

        Never raises: the training error that brought us here is the one to report. A claim not yet
        confirmed is confirmed first (not on ``quick``): a run a rival launcher won is not this launcher's to end.
        """
        if not quick and not self._claim_is_ours():
            self._stop_claim()
            return
        retry = OutageRetry(0.0) if quick else self.retry
        try:
            retry.call("marking the run FAILED", lambda: self._terminate("FAILED"))
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: MLflow run {self.run_id} could not be marked FAILED and is left RUNNING "
                  f"({redact_text(str(exc))}); its launcher claim lapses on its own, and a rerun with the "
                  "same run.name resumes the run and ends it", file=sys.stderr, flush=True)
        finally:
            self._stop_claim()

    def _claim_is_ours(self) -> bool:
        if self.claim is None:
            return True
        try:
            self.claim.confirm()  # at once when verified already
        except RunNameTaken:
            return False
        except Exception as exc:  # noqa: BLE001 -- MLflow not answering: ended as this launcher's, as before
            log.debug("claim not verified before ending the run: %s", redact_text(str(exc)))
        return True

    def _stop_claim(self) -> None:
        if self.claim is not None:
            self.claim.stop_heartbeat()

    def _terminate(self, status: str) -> None:
        self.client.log_batch(self.run_id, tags=release_tags())
        self.client.set_terminated(self.run_id, status=status)

    # ------------------------------------------------------------ the end of a successful fit

    def finish(self, request: Registration, checkpoint_dir: Path) -> Finished:
        """The end-of-run steps, each retried within the outage tolerance.

        Raises ``TrackingIncomplete`` (with the command that finishes later) when MLflow stays away. The
        claim stays live while it waits: a second launcher must not resume a run that is being finished.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self._finish(request, checkpoint_dir)
        except (TrackingUnavailable, MlflowException) as exc:  # refused outright: the same steps, later
            try:
                where, saved = request.save(), True
            except OSError as save_error:
                where, saved = f"not saved ({save_error})", False
            command = finish_command(request, self.target.tracking_uri, saved)
            reason = str(exc) if isinstance(exc, TrackingUnavailable) else f"MLflow refused a step: {first_line(exc)}"
            raise TrackingIncomplete(
                f"training finished and its checkpoint is complete ({redact_text(request.checkpoint)}), but "
                f"{redact_text(reason)}. MLflow run {request.run_id} stays RUNNING. Once MLflow answers, this "
                f"finishes it (replays the buffered metrics, registers the model, ends the run; steps saved in "
                f"{redact_text(where)}):\n  {redact_text(command)}") from exc
        finally:
            self._stop_claim()

    def _finish(self, request: Registration, checkpoint_dir: Path) -> Finished:
        run_id, retry = request.run_id, self.retry
        buffer = MetricBuffer.load(checkpoint_dir)
        if not buffer.is_empty():  # resumable: what was sent stays sent across retries
            sent = retry.call("replaying the run's buffered metrics", lambda: buffer.send(self.client, run_id))
            if sent:
                print(f"replayed {sent} metric point(s) MLflow had not received during training", flush=True)
        finished = retry.call("registering the model", lambda: self._register(request, checkpoint_dir))
        retry.call("logging the checkpoints as models", lambda: self._log_checkpoint_models(request))
        description = f"{request.description}\n{registration_line(finished.registered)}".strip()
        retry.call("writing the run's description",
                   lambda: self.client.set_tag(run_id, DESCRIPTION_TAG, description[:8000]))
        retry.call("marking the run FINISHED", lambda: self._terminate("FINISHED"))
        return finished

    def _register(self, request: Registration, checkpoint_dir: Path) -> Finished:
        """Log, register and alias the checkpoint's export, unless this run did so before (then report it).

        Looked up again on each try: a try whose reply was lost must not register a second version.
        """
        checkpoint = redact_text(request.checkpoint)
        name = request.registered_model
        if name:
            existing = find_registered_version(self.client, name, request.run_id, checkpoint)
            if existing is not None:
                print(f"MLflow run {request.run_id} registered this checkpoint before, as {name} version "
                      f"{existing.version}: not registered again, @{request.alias} not moved", flush=True)
                registered = RegisteredModel(name, str(existing.version), None, f"models:/{name}/{existing.version}")
                if not (existing.description or "").strip():  # a try that registered, then lost the reply
                    self._describe(request, registered)
                return Finished(registered, True)
        experiment_id = self.client.get_run(request.run_id).info.experiment_id
        logged = find_logged_model(self.client, experiment_id, request.run_id, checkpoint)
        model_uri = f"models:/{logged.model_id}" if logged is not None else log_pyfunc(
            self.target, request.run_id, request.python_model(), checkpoint_dir / EXPORT_DIR,
            input_example=request.example(), signature=request.model_signature(), step=request.step,
            tags={SOURCE_CHECKPOINT_TAG: checkpoint}, client=self.client).model_uri
        if not name:
            return Finished(RegisteredModel(None, None, None, model_uri), logged is not None)
        tags = {**request.version_tags, SOURCE_CHECKPOINT_TAG: checkpoint}
        registered = register_version(self.target, model_uri, name, request.alias, tags, self.client)
        self._describe(request, registered)
        return Finished(registered, False)

    def _describe(self, request: Registration, registered: RegisteredModel) -> None:
        card = model_card(request.what_it_is, request.description, request.run_id, redact_text(request.checkpoint),
                          registered)
        describe_version(self.client, registered, card, request.what_it_is)

    def _log_checkpoint_models(self, request: Registration) -> None:
        """Each kept epoch checkpoint as an MLflow logged model (the run's "Logged models") with its metrics.

        No weights are uploaded: the model's ``checkpoint`` tag says where Ray Train keeps them (the final
        epoch's export is the run's registered ``model``). The metrics are the run's own points of that
        step, re-logged with the model's id as MLflow does for ``log_model(step=...)``.
        """
        from mlflow.entities import Metric

        client, run_id = self.client, request.run_id
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = {m.name: m for m in client.search_logged_models([experiment_id],
                                                                 filter_string=f"source_run_id='{run_id}'")}
        for kept in request.checkpoints:
            name = f"epoch-{kept['epoch']}"
            if name in logged and str(logged[name].status).endswith("READY"):
                continue  # a rerun of a finished run, or a retry: logged already
            model = logged.get(name) or client.create_logged_model(
                experiment_id, name=name, source_run_id=run_id, model_type="checkpoint",
                tags={"checkpoint": kept["uri"], "epoch": str(kept["epoch"]), "step": str(kept["step"])})
            points = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id)
                      for key in kept["keys"] for m in client.get_metric_history(run_id, key)
                      if m.step == kept["step"]]
            client.log_batch(run_id, metrics=points)
            client.finalize_logged_model(model.model_id, "READY")
