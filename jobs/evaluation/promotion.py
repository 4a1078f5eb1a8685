"""Promotion's rule and record (``jobs.promote``): a classifier's @candidate to @production when it measures better.

Both versions go through evaluation's run (``jobs.evaluation.runner``: the batch-scoring pipeline, one
MLflow run each) on the same labelled file, and the char n-gram baseline is fitted on
``input.train_path`` and measured on the same rows. The candidate is promoted only when its ``metric``
beats production's by more than ``margin`` and (``require_beat_baseline``) beats the baseline;
with no @production yet, the baseline alone is the bar. Only then does @production move.
Either way one MLflow run (experiment ``promote``) records the decision, the reason, both
versions' metrics, the baseline and the data digest, and the candidate version carries
``promotion.*`` tags. @production moves last, once all of that is written: a failure before it
moves nothing (the run ends FAILED and its tags say so). Exit 0 when promoted, kept or already in
production; 1 when something failed (no @candidate, an evaluation failed, the evaluations
disagree on the data, MLflow refused a write) and nothing moved; 65 when the data is at fault
(``jobs.common.cli`` lists every job's exit statuses).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from jobs.common.naming import unique_run_name
from jobs.common.ray_runtime import RayConfig
from jobs.common.redaction import redact_text
from jobs.common.tracking import (TrackingConfig, TrackingTarget, client_for, environment_tags, log_params,
                                  prepare_tracking)
from jobs.common.tracking_retry import OutageRetry
from jobs.evaluation.inputs import EvaluationInput
from jobs.evaluation.runner import EvaluateConfig, EvaluationOutcome, file_digest
from jobs.evaluation.runner import run as evaluate
from jobs.scoring.settings import PipelineSettings

Metric = Literal["accuracy", "macro_f1"]
Outcome = Literal["promoted", "kept", "no_change"]
BASELINE = "char_ngram"  # jobs.common.baselines: the char 1-3-gram TF-IDF + logistic regression


@dataclass(frozen=True, kw_only=True)
class PromoteConfig(PipelineSettings):
    EXAMPLE_OVERRIDE: ClassVar[str] = "margin=0.01"  # --help's --set example (a unit test loads it)
    registered_model: str = "review-sentiment"  # the registered model whose versions are compared
    candidate_alias: str = "candidate"  # the version tried against production
    production_alias: str = "production"  # what the scheduled scorer follows
    # Keys that moved to the input section every data-reading job shares (jobs.common.inputs): refused by name
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"data": "input.path", "train_data": "input.train_path"}
    # The labelled file both versions are measured on (input.path), the baseline's training file (input.train_path)
    input: EvaluationInput = field(default_factory=lambda: EvaluationInput(train_path="data/corpus/train.parquet"))
    metric: Metric = "macro_f1"  # what both versions are compared on, measured on input.path
    margin: float = 0.0  # the candidate must beat production by more than this
    require_beat_baseline: bool = True  # ... and beat the char n-gram baseline
    output_dir: str = "runs/promotions"  # the evaluations' staged rows and scores
    evaluation_experiment: str = "evaluate"  # where the two evaluation runs are logged
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="promote"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None  # the promotion's MLflow run name; None: a new unique name

    def __post_init__(self) -> None:
        if not self.margin >= 0:
            raise ValueError(f"margin: {self.margin} must be >= 0 (a negative margin promotes a worse model)")
        if self.require_beat_baseline and not self.input.train_path:
            raise ValueError("require_beat_baseline needs input.train_path (the baseline is fitted on it)")
        if self.candidate_alias == self.production_alias:
            raise ValueError(f"candidate_alias and production_alias are both {self.candidate_alias!r}")


class PromotionError(RuntimeError):
    """Nothing could be decided: no candidate, a failed evaluation, evaluations that disagree."""


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str


def decide(metric: str, candidate: float, production: float | None, baseline: float | None, margin: float,
           require_baseline: bool) -> Decision:
    """The gate: promote only when the candidate beats production by more than ``margin`` and the baseline.

    ``production`` None: no version is in production yet, the baseline is the bar. A value that is
    not a number never wins (a comparison with NaN is false), and the reason says so.
    """
    if require_baseline and baseline is None:
        raise ValueError("the baseline is required but was not measured")
    if math.isnan(candidate):
        return Decision("kept", f"the candidate's {metric} is not a number")
    if production is not None and not candidate > production + margin:
        return Decision("kept", f"candidate {metric} {candidate:.4f} does not beat production {production:.4f} "
                                f"by more than the margin {margin:g}")
    if require_baseline and not candidate > baseline:
        return Decision("kept", f"candidate {metric} {candidate:.4f} does not beat the char n-gram baseline "
                                f"{baseline:.4f}")
    versus = ("no version in production" if production is None
              else f"production {production:.4f} + margin {margin:g}")
    if require_baseline:
        versus += f", baseline {baseline:.4f}"
    return Decision("promoted", f"candidate {metric} {candidate:.4f} beats {versus}")


@dataclass(frozen=True)
class Version:
    role: Literal["candidate", "production"]
    alias: str
    version: str
    evaluation: EvaluationOutcome | None = None
    data_digest: str | None = None  # as the evaluation's run recorded it

    def value(self, metric: str) -> float:
        return float(self.evaluation.metrics[metric]) if self.evaluation is not None else math.nan


@dataclass(frozen=True)
class PromotionOutcome:
    run_id: str
    decision: Decision
    candidate: Version
    production: Version | None  # the version in production before this run
    production_after: str | None  # the version @production names after it
    data_digest: str
    baseline: dict[str, float]  # accuracy / macro_f1 of the char n-gram baseline on the scored rows


def current_aliases(config: PromoteConfig, target: TrackingTarget) -> tuple[str, str | None]:
    """The candidate and production version numbers (production None when the alias is not set)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client_for(target).get_registered_model(config.registered_model).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"no registered model named {config.registered_model!r}") from None
        raise
    aliases = {name: str(version) for name, version in aliases.items()}
    if config.candidate_alias not in aliases:
        raise PromotionError(f"{config.registered_model} has no @{config.candidate_alias} version "
                             f"(aliases: {', '.join(sorted(aliases)) or 'none'}): nothing to promote")
    return aliases[config.candidate_alias], aliases.get(config.production_alias)


def evaluation_config(config: PromoteConfig, version: str, role: str, with_baseline: bool) -> EvaluateConfig:
    """The evaluation job's config for one version, pinned by number (an alias may move meanwhile)."""
    pipeline = {f.name: getattr(config, f.name) for f in dataclasses.fields(PipelineSettings)}
    return EvaluateConfig(**pipeline, model=f"models:/{config.registered_model}/{version}",
                          input=config.input if with_baseline else dataclasses.replace(config.input, train_path=None),
                          output_dir=config.output_dir, ray=config.ray,
                          tracking=dataclasses.replace(config.tracking, experiment=config.evaluation_experiment),
                          run_name=unique_run_name(f"promote-{role}-v{version}"))


def check_comparable(digest: str, candidate: Version, production: Version | None, metric: str) -> None:
    """Both evaluations measured the file promote read (same digest), on the same rows, with ``metric``."""
    for version in filter(None, (candidate, production)):
        outcome = version.evaluation
        if metric not in outcome.metrics:
            raise PromotionError(f"version {version.version} has no {metric} (a {outcome.model.kind} model): "
                                 "promote compares classifiers")
        if version.data_digest != digest:
            raise PromotionError(f"the {version.role}'s evaluation (run {outcome.run_id}) measured data with digest "
                                 f"{version.data_digest}, not {digest}: the file changed while promoting")
    if production is not None and sorted(candidate.evaluation.result.rows) != sorted(production.evaluation.result.rows):
        raise PromotionError("the two evaluations scored different rows (see their rejected rows): "
                             "their metrics are not comparable")


def evaluated(version: Version, config: PromoteConfig, target: TrackingTarget, with_baseline: bool) -> Version:
    """``version`` measured by the evaluation job, with the data digest its run recorded."""
    outcome = evaluate(evaluation_config(config, version.version, version.role, with_baseline))
    logged = client_for(target).get_run(outcome.run_id).data.tags.get("data_digest")
    return dataclasses.replace(version, evaluation=outcome, data_digest=logged)


def baseline_values(candidate: Version) -> dict[str, float]:
    metrics = candidate.evaluation.metrics
    return {m: metrics[f"baseline_{BASELINE}_eval_{m}"] for m in ("accuracy", "macro_f1")
            if f"baseline_{BASELINE}_eval_{m}" in metrics}


def run(config: PromoteConfig) -> PromotionOutcome:
    target = prepare_tracking(config.tracking)
    candidate_version, production_version = current_aliases(config, target)
    candidate = Version("candidate", config.candidate_alias, candidate_version)
    production = (Version("production", config.production_alias, production_version)
                  if production_version is not None else None)
    digest = file_digest(config.input.path)
    if candidate_version == production_version:
        decision = Decision("no_change", f"version {candidate_version} is already @{config.production_alias}")
        return record(config, target, decision, candidate, production, digest, {})
    # The candidate's evaluation fits the baseline (once) on the rows it scored; production's is the same rows.
    candidate = evaluated(candidate, config, target, with_baseline=config.input.train_path is not None)
    if production is not None:
        production = evaluated(production, config, target, with_baseline=False)
    check_comparable(digest, candidate, production, config.metric)
    baseline = baseline_values(candidate)
    decision = decide(config.metric, candidate.value(config.metric),
                      production.value(config.metric) if production is not None else None,
                      baseline.get(config.metric), config.margin, config.require_beat_baseline)
    return record(config, target, decision, candidate, production, digest, baseline)


def move_production(config: PromoteConfig, target: TrackingTarget, candidate: Version,
                    production: Version | None) -> None:
    """Point @production at the candidate, unless someone moved either alias while we measured."""
    now = current_aliases(config, target)
    if now != (candidate.version, production.version if production else None):
        raise PromotionError(f"the aliases moved while promoting (now @{config.candidate_alias} {now[0]}, "
                             f"@{config.production_alias} {now[1]}): nothing changed, run promote again")
    client_for(target).set_registered_model_alias(config.registered_model, config.production_alias,
                                                  candidate.version)


def record(config: PromoteConfig, target: TrackingTarget, decision: Decision, candidate: Version,
           production: Version | None, digest: str, baseline: dict[str, float]) -> PromotionOutcome:
    """One MLflow run with the decision and what it rests on; when promoting, @production moves last.

    Everything the promotion records (the run's params, metrics and tags, the candidate's
    ``promotion.*`` tags) is written before the alias moves, so a failure on the way moves nothing;
    once it has moved, only the run's end is left, and a failure there is a warning.
    """
    from mlflow.entities import Metric as Point  # Metric here is the promotion metric's name

    name = config.registered_model
    params = {"registered_model": name, "candidate_alias": config.candidate_alias,
              "production_alias": config.production_alias, "candidate_version": candidate.version,
              "production_version": production.version if production else "none", "metric": config.metric,
              "margin": config.margin, "require_beat_baseline": config.require_beat_baseline,
              "data": str(Path(config.input.path).resolve()), "data_digest": digest,
              "train_data": config.input.train_path or ""}
    metrics = {f"baseline_{BASELINE}_{m}": v for m, v in baseline.items()}
    for version in filter(None, (candidate, production)):
        if version.evaluation is not None:
            metrics.update({f"{version.role}_{m}": version.value(m) for m in ("accuracy", "macro_f1")})
    evaluations = {f"{v.role}_evaluation_run_id": v.evaluation.run_id
                   for v in filter(None, (candidate, production)) if v.evaluation is not None}
    client = client_for(target)
    run_id = client.create_run(target.experiment_id, run_name=config.run_name or unique_run_name("promote"),
                               tags={**environment_tags(), "job": "promote", "model_name": name,
                                     "data_digest": digest, **evaluations}).info.run_id
    promoting = decision.outcome == "promoted"
    try:
        log_params(client, run_id, params)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Point(k, v, now, 0) for k, v in metrics.items() if not math.isnan(v)])
        after = candidate.version if promoting else (production.version if production else None)
        outcome = PromotionOutcome(run_id=run_id, decision=decision, candidate=candidate, production=production,
                                   production_after=after, data_digest=digest, baseline=baseline)
        for key, value in {"decision": decision.outcome, "reason": decision.reason,
                           "production_version_after": after or "none",
                           "mlflow.note.content": "\n".join(summary_lines(outcome, config))}.items():
            client.set_tag(run_id, key, value)
        tag_candidate(outcome, config, target)
        if promoting:
            move_production(config, target, candidate, production)  # last: nothing else is left to fail
    except BaseException as exc:
        _record_failure(client, run_id, config, candidate, exc, promoting)
        raise
    try:
        OutageRetry(config.tracking.outage_tolerance_s).call("ending the promote run",
                                                            lambda: client.set_terminated(run_id, "FINISHED"))
    except Exception as exc:  # noqa: BLE001 -- the decision is made and recorded; only the run's end is missing
        print(f"WARNING: {decision.outcome}; MLflow run {run_id} records it but stays RUNNING "
              f"({redact_text(str(exc))})", file=sys.stderr, flush=True)
    return outcome


def _record_failure(client, run_id: str, config: PromoteConfig, candidate: Version, exc: BaseException,
                    promoting: bool) -> None:
    """Best effort, one try each: the run FAILED and, when promoting, tags that no longer claim a promotion."""
    reason = f"promotion failed before @{config.production_alias} moved: {type(exc).__name__}: {exc}"[:4000]
    writes = [lambda: client.set_tag(run_id, "decision", "failed"), lambda: client.set_tag(run_id, "reason", reason)]
    if promoting:
        writes += [lambda: client.set_model_version_tag(config.registered_model, candidate.version,
                                                        "promotion.decision", "failed"),
                   lambda: client.set_model_version_tag(config.registered_model, candidate.version,
                                                        "promotion.reason", reason)]
    for write in [*writes, lambda: client.set_terminated(run_id, "FAILED")]:
        try:
            write()
        except Exception:  # noqa: BLE001 -- the failure being reported is the one that matters
            pass


def tag_candidate(outcome: PromotionOutcome, config: PromoteConfig, target: TrackingTarget) -> None:
    """``promotion.*`` tags on the candidate version: the last gate it went through and what it was compared with."""
    candidate, production, metric = outcome.candidate, outcome.production, config.metric
    tags = {"decision": outcome.decision.outcome, "reason": outcome.decision.reason, "run_id": outcome.run_id,
            "metric": metric, "margin": str(config.margin), "data_digest": outcome.data_digest,
            "production_version": production.version if production else "none",
            "candidate_value": _fmt(candidate.value(metric)) if candidate.evaluation else "none",
            "production_value": _fmt(production.value(metric)) if production and production.evaluation else "none",
            "baseline_value": _fmt(outcome.baseline[metric]) if metric in outcome.baseline else "none"}
    client = client_for(target)
    for key, value in tags.items():
        client.set_model_version_tag(config.registered_model, candidate.version, f"promotion.{key}", value)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else json.dumps(round(value, 6))


def summary_lines(outcome: PromotionOutcome, config: PromoteConfig) -> list[str]:
    rows = [("version", "accuracy", "macro-F1")]
    for version in filter(None, (outcome.candidate, outcome.production)):
        label = f"{version.role} v{version.version} (@{version.alias})"
        if version.evaluation is None:
            rows.append((label, "-", "-"))
        else:
            rows.append((label, f"{version.value('accuracy'):.4f}", f"{version.value('macro_f1'):.4f}"))
    if outcome.baseline:
        rows.append(("char 1-3-gram TF-IDF + LR", *(f"{outcome.baseline.get(m, math.nan):.4f}"
                                                    for m in ("accuracy", "macro_f1"))))
    width = max(len(r[0]) for r in rows)
    before = outcome.production.version if outcome.production else None
    after = f"v{outcome.production_after}" if outcome.production_after else "none"
    after += " (unchanged)" if outcome.production_after == before else f" (was {f'v{before}' if before else 'none'})"
    scored = outcome.candidate.evaluation
    rows_note = f", {scored.counts.rows_out} rows scored" if scored is not None else ""
    return [f"model      : {config.registered_model}, metric {config.metric}, margin {config.margin:g}",
            f"data       : {config.input.path} (digest {outcome.data_digest}{rows_note})",
            *(f"  {a:<{width}}  {b:>8}  {c:>8}" for a, b, c in rows),
            f"decision   : {outcome.decision.outcome}: {outcome.decision.reason}",
            f"@{config.production_alias:<10}: {after}"]
