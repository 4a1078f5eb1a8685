"""The sweep in MLflow: one parent run (space, algorithm, scheduler, budget, the trials compared, plots,
the best trial) with one nested child run per trial, each child ending as what happened to its trial.

A trial's child is the training job's own run (``tracking.parent_run_id``). What the job cannot
record itself the sweep records at its end, from Tune's results: a trial stopped by the scheduler
was killed mid-run (its run is KILLED, tagged ``sweep_trial_state=early_stopped`` and the epochs it
trained), a trial that crashed before its run existed gets a FAILED child with the error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs.common.registry import SOURCE_CHECKPOINT_TAG, RegisteredModel, describe_version, register_version
from jobs.common.tracking import (DESCRIPTION_TAG, PARENT_RUN_TAG, TrackingTarget, client_for, filter_literal,
                                  log_params)
from jobs.sweeps.settings import Dimension
from jobs.train.run_record import model_card

SWEEP_TAG = "sweep_name"  # on the parent run: the sweep it records (the same name resumes it)
TRIAL_STATE_TAG = "sweep_trial_state"  # on each child: finished | early_stopped | failed
TRIAL_ID_TAG = "sweep_trial_id"
EARLY_STOPPED = "early_stopped"


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the sweep saw it: Tune's last result for it and its MLflow child run."""
    trial_id: str
    params: dict[str, Any]
    state: str  # finished | early_stopped | failed (ended: Tune ended it without an error; not yet told apart)
    metric: float | None  # the last reported value of the sweep's metric
    epochs: int
    run_id: str | None
    error: str | None = None
    reported_ms: int | None = None  # when the trial last reported to Tune: a stopped trial's end


def open_parent(target: TrackingTarget, name: str, params: dict[str, Any], space: dict[str, Any]) -> tuple[str, bool]:
    """The sweep's parent run: found again by its name when a killed sweep resumes; ``(run_id, resumed)``."""
    client = client_for(target)
    found = client.search_runs([target.experiment_id], filter_string=f"tags.{SWEEP_TAG} = "
                               f"{filter_literal(name, 'sweep name')} and tags.`{PARENT_RUN_TAG}` IS NULL",
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(target.experiment_id, run_name=name, tags={SWEEP_TAG: name, "job": "sweep"})
    log_params(client, run.info.run_id, params)
    client.log_dict(run.info.run_id, space, "search_space.json")
    return run.info.run_id, False


def child_runs(target: TrackingTarget, parent_run_id: str) -> dict[str, Any]:
    """The parent's children by their Ray Train run name (the trial's ``run.name``)."""
    client = client_for(target)
    runs = client.search_runs([target.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'",
                              max_results=10_000)
    return {run.data.tags.get("ray_run_name", run.info.run_name): run for run in runs}


def record_trials(target: TrackingTarget, parent_run_id: str, outcomes: list[TrialOutcome],
                  run_names: dict[str, str]) -> list[TrialOutcome]:
    """End each child run as its trial ended; returns the outcomes with each child's run id."""
    client = client_for(target)
    children = child_runs(target, parent_run_id)
    recorded = []
    now = int(time.time() * 1000)
    for outcome in outcomes:
        run = children.get(run_names[outcome.trial_id])
        if run is None:  # the trial failed before the job opened its run (its config, its inputs)
            run = client.create_run(target.experiment_id, run_name=run_names[outcome.trial_id],
                                    tags={PARENT_RUN_TAG: parent_run_id, "ray_run_name": run_names[outcome.trial_id]})
            log_params(client, run.info.run_id, outcome.params)
        run_id = run.info.run_id
        if outcome.state == "ended":
            outcome = replace(outcome, state="finished" if run.info.status == "FINISHED" else EARLY_STOPPED)
        tags = {TRIAL_STATE_TAG: outcome.state, TRIAL_ID_TAG: outcome.trial_id, "sweep_epochs": str(outcome.epochs)}
        if outcome.error:
            tags["sweep_trial_error"] = outcome.error[:4000]
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        status = {"finished": "FINISHED", EARLY_STOPPED: "KILLED", "failed": "FAILED"}[outcome.state]
        if run.info.status != status:  # ended when it was stopped, not when the sweep got to record it
            client.set_terminated(run_id, status=status, end_time=outcome.reported_ms or now)
        recorded.append(replace(outcome, run_id=run_id))
    return recorded


def best_trial(outcomes: list[TrialOutcome], mode: str) -> TrialOutcome | None:
    """The finished trial with the best last metric (its final model is the one the job logged)."""
    finished = [o for o in outcomes if o.state == "finished" and o.metric is not None and math.isfinite(o.metric)]
    if not finished:
        return None
    return (max if mode == "max" else min)(finished, key=lambda o: o.metric)


def comparison_rows(outcomes: list[TrialOutcome], metric: str) -> list[dict[str, Any]]:
    names = sorted({name for o in outcomes for name in o.params})
    return [{"trial": o.trial_id, "state": o.state, "epochs": o.epochs,
             metric: "" if o.metric is None else f"{o.metric:.6g}", **{n: o.params.get(n, "") for n in names},
             "mlflow_run_id": o.run_id or ""} for o in outcomes]


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, for the parent run's description."""
    if not rows:
        return "(no trials)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def plot_metric_by_param(outcomes: list[TrialOutcome], space: dict[str, Dimension], metric: str, path: Path) -> None:
    """One panel per hyperparameter: each trial's last metric against its value, marked by how it ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(space)
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    markers = {"finished": ("o", "tab:blue"), EARLY_STOPPED: ("x", "tab:orange"), "failed": ("s", "tab:red")}
    for axis, name in zip(axes[0], names):
        for state, (marker, colour) in markers.items():
            points = [(o.params[name], o.metric) for o in outcomes
                      if o.state == state and o.metric is not None and name in o.params]
            if points:
                xs, ys = zip(*points)
                categorical = any(isinstance(x, str) for x in xs)
                axis.scatter([str(x) for x in xs] if categorical else xs, ys, marker=marker, color=colour,
                             label=state.replace("_", " "))
        if space[name].log_scale:
            axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def finish_parent(target: TrackingTarget, parent_run_id: str, outcomes: list[TrialOutcome],
                  space: dict[str, Dimension], metric: str, mode: str, best: TrialOutcome | None,
                  registered: RegisteredModel | None, header: str) -> None:
    """The comparison (description, CSV, plot), the best trial's metric and params, and the run's end."""
    client = client_for(target)
    rows = comparison_rows(outcomes, metric)
    counts = {state: sum(o.state == state for o in outcomes) for state in ("finished", EARLY_STOPPED, "failed")}
    lines = [header, "", f"{len(outcomes)} trials: {counts['finished']} finished, {counts[EARLY_STOPPED]} stopped "
             f"early, {counts['failed']} failed.", ""]
    if best is not None:
        lines += [f"Best: trial `{best.trial_id}` ({metric} {best.metric:.6g}, {mode}), MLflow run `{best.run_id}`"
                  + (f", registered as `{registered.name}` version {registered.version}"
                     + (f" (`@{registered.alias}`)" if registered.alias else "") if registered else "") + ".", ""]
    lines += [comparison_table(rows)]
    client.set_tag(parent_run_id, DESCRIPTION_TAG, "\n".join(lines)[:8000])
    client.log_text(parent_run_id, _csv(rows), "trials.csv")
    client.log_dict(parent_run_id, {"trials": rows}, "trials.json")
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / f"{metric}_by_hyperparameter.png"
        plot_metric_by_param(outcomes, space, metric, plot)
        client.log_artifact(parent_run_id, str(plot))
    tags = {f"trials_{state}": str(n) for state, n in counts.items()}
    if best is not None:
        tags.update({"best_trial_id": best.trial_id, "best_run_id": best.run_id or ""})
        client.log_metric(parent_run_id, f"best_{metric}", best.metric)
        tags.update({f"best.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in best.params.items()})
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)
    client.set_terminated(parent_run_id, status="FINISHED" if best is not None else "FAILED")


def mark_interrupted(target: TrackingTarget, parent_run_id: str, unended: list[str]) -> None:
    """The parent of a sweep stopped before its trials ended (Ctrl-C): KILLED, the unended trials named;
    its children stay as their jobs left them, for the resumed sweep to end."""
    client = client_for(target)
    client.set_tag(parent_run_id, "sweep_interrupted_trials", ",".join(unended)[:4000])
    client.set_terminated(parent_run_id, status="KILLED")


def register_best(target: TrackingTarget, best: TrialOutcome, parent_run_id: str, registered_name: str,
                  alias: str | None) -> RegisteredModel:
    """The best trial's logged model as a new version with ``alias``, tagged with the sweep; once per sweep."""
    client = client_for(target)
    existing = client.get_run(parent_run_id).data.tags.get("registered_version")
    if existing:  # a resumed sweep that had registered before it was killed
        return RegisteredModel(registered_name, existing, None, f"models:/{registered_name}/{existing}")
    models = [m for m in client.search_logged_models([target.experiment_id],
                                                      filter_string=f"source_run_id='{best.run_id}'")
              if m.name == "model" and str(m.status).endswith("READY")]
    if not models:
        raise RuntimeError(f"the best trial's run {best.run_id} logged no model to register")
    registered = register_version(target, f"models:/{models[0].model_id}", registered_name, alias,
                                  {"sweep_run_id": parent_run_id, "sweep_trial_id": best.trial_id}, client)
    card = model_card(f"The best of sweep run `{parent_run_id}`: trial `{best.trial_id}` ({best.params}).",
                      client.get_run(best.run_id).data.tags.get(DESCRIPTION_TAG, ""), best.run_id,
                      models[0].tags.get(SOURCE_CHECKPOINT_TAG, "?"), registered)
    describe_version(client, registered, card, "")
    client.set_tag(parent_run_id, "registered_version", registered.version)
    return registered
