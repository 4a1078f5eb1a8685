"""Scheduled scoring: score the input partitions a model alias has not scored yet, exactly once each.

``jobs.score_partitions`` is its command line; a scheduler (``deploy/``: cron + ``ray job submit``, or a
Kubernetes CronJob that creates KubeRay RayJobs) runs it. Each run:

1. resolves the model reference (``models:/name@alias``) to its current version, once;
2. lists the partitions under ``input.path`` matching ``input.partitions`` (e.g. ``date=*``) and, from
   the committed outputs under ``output_root``, decides for each: score it (new; its input files
   changed since it was scored, by default: ``on_changed_inputs``; scored by an older model
   version, when ``on_new_model_version`` is ``rescore``), skip it (done by this version; stale;
   empty; not marked complete by its producer's ``require_input_marker``) or fail it (inputs
   changed and ``on_changed_inputs`` is ``fail``);
3. takes the partitions to score a few at a time (``partitions_per_pipeline``): takes each
   one's lease (skipping it when another live instance holds it; a store error fails only that
   partition) and decides again under the lease; scores the group with one streaming Ray Data
   pipeline (the one ``jobs.batch_infer`` uses; actors start once per group, not once per
   partition), each partition written to its own staging location; as soon as all of a
   partition's rows are written, while the others are still scored, verifies rows out + rows
   rejected = rows in, checks the lease is still its own, commits atomically and durably (fsynced)
   as output version ``v<k>``, records it in the ledger (``jobs.scoring.ledger`` documents the
   layout, the commit protocol and the reader contract) and releases its lease. A corrupt file, or
   a commit that fails, fails only its own partition; a pipeline that fails midway fails only the
   partitions it had not finished;
4. logs one MLflow run (partitions scored / skipped / failed, rows, model version) and exits
   non-zero naming the failed partitions; a failed partition does not stop the others. The summary
   comes after the commits: when MLflow does not answer within ``tracking.outage_tolerance_s`` it is
   a warning (the ledger has the outcome, which is printed too), and the exit status stays the
   partitions' own.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from data_pipeline.paths import resolve_parquet_files
from data_pipeline.quarantine import ScoringGroup, inspect_inputs
from jobs.common import config as config_lib
from jobs.common.naming import now_iso, unique_run_name
from jobs.common.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.registry import ResolvedModel, resolve_model_ref
from jobs.common.shared_storage import local_model_dir, require_shared
from jobs.common.tracking import (TrackingConfig, TrackingTarget, client_for, environment_tags, log_params,
                                  prepare_tracking, start_system_metrics, stop_system_metrics)
from jobs.scoring.ledger import (Attempt, CommitFailed, Lease, LeaseLost, LeaseSettings, Ledger, OutputVersion,
                                Store, committed_versions, entry_from_manifest)
from jobs.scoring.partition_plan import (Decision, Partition, PartitionOutcome, decide, discover_partitions,
                                         fingerprints, has_marker)
from jobs.scoring.partition_tracking import record_run
from jobs.scoring.pipeline import PipelineCounts, ScoringError, ScoringModel, manifest_for, score_groups
from jobs.scoring.predictors import PredictorSettings
from jobs.scoring.settings import RENAMED_COLUMNS, PipelineSettings, ScoringInput

# Fault injection for tests: seconds to wait after a partition's rows are written and before it
# is committed, so a test can kill the job at the worst moment.
PAUSE_BEFORE_COMMIT_ENV = "SCORE_PARTITIONS_PAUSE_BEFORE_COMMIT_S"



@dataclass(frozen=True, kw_only=True)
class PartitionsInput(ScoringInput):
    """The partitions to score: Parquet folders under one root (``format`` auto or parquet)."""
    path: str = "data/incoming"  # the root of the partitions: a local path or s3://...
    partitions: str = "date=*"  # glob of partition directories under path; "/" separates levels

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format.format not in ("auto", "parquet"):
            raise ValueError(f"format.format: partitions are read as Parquet, got {self.format.format!r}")


@dataclass(frozen=True, kw_only=True)
class ScorePartitionsConfig(PipelineSettings):
    EXAMPLE_OVERRIDE: ClassVar[str] = "max_partitions=2"  # --help's --set example (a unit test loads it)
    # Keys that moved to the input section every data-reading job shares (jobs.common.inputs): refused by name
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"input_root": "input.path", "partitions": "input.partitions",
                                              **RENAMED_COLUMNS}
    input: PartitionsInput = field(default_factory=PartitionsInput)  # the partitions and how to read them
    output_root: str = "runs/scored"  # outputs, ledger and leases; local path or s3://...
    model: str = "models:/review-sentiment@production"  # resolved to one version at the start of each run
    # A partition whose input files changed (size, mtime, names) since it was scored: score it again into a
    # new output version (its new rows are scored), skip it (reported as changed_inputs) or fail it (exit 1).
    on_changed_inputs: Literal["rescore", "skip", "fail"] = "rescore"
    # A partition scored by an older version of the model (the alias moved): skip (stale_model) or rescore.
    on_new_model_version: Literal["skip", "rescore"] = "skip"
    rescore: bool = False  # shorthand: true means both of the above are "rescore"
    # Score only partitions their producer marked complete with this file; None scores whatever is there.
    require_input_marker: str | None = "_SUCCESS"
    max_partitions: int | None = None  # score at most this many per run (oldest first); None: all
    partitions_per_pipeline: int = 8  # partitions scored by one Ray Data pipeline (actors start once per pipeline)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="score-partitions"))
    ray: RayConfig = field(default_factory=RayConfig)
    run_name: str | None = None  # the MLflow run's name; None: a new unique name

    @property
    def changed_inputs_policy(self) -> str:
        return "rescore" if self.rescore else self.on_changed_inputs

    @property
    def new_model_policy(self) -> str:
        return "rescore" if self.rescore else self.on_new_model_version



def decide_for(config: "ScorePartitionsConfig", versions: list[OutputVersion], inputs: list[dict],
               model: ResolvedModel) -> Decision:
    return decide(versions, inputs, model, config.changed_inputs_policy, config.new_model_policy)



# ---------------------------------------------------------------- one partition

@dataclass
class Claimed:
    partition: Partition
    lease: Lease
    decision: Decision
    attempt: Attempt
    started: str
    group: ScoringGroup | None = None


def claim(partition: Partition, store: Store, resolved: ResolvedModel, config: ScorePartitionsConfig,
           owner: dict) -> Claimed | PartitionOutcome:
    """Take the partition's lease and decide again under it; an outcome when there is nothing to do."""
    try:
        lease = Lease.acquire(store, partition.name, config.lease, owner)
        if lease is None:
            holder = Lease.holder(store, partition.name) or {}
            return PartitionOutcome(partition.name, "busy", f"lease held by {holder.get('host')}:{holder.get('pid')} "
                                    f"(run {holder.get('scheduled_run_id')}) until {holder.get('expires_at')}")
    except OSError as exc:  # a store error on this partition's lease fails this partition, not the run
        return PartitionOutcome(partition.name, "failed", type(exc).__name__,
                                error=f"could not take the lease under {store.uri('_leases')}: {exc}")
    try:
        versions = committed_versions(store, partition.name)  # again, now that no one else can commit it
        decision = decide_for(config, versions, fingerprints(partition, retry=config.storage), resolved)
        if not decision.score:
            release(lease)
            return decision.outcome(partition.name)
        number = max((v.number for v in versions), default=0) + 1
        attempt = Attempt(store, partition.name, number, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
        attempt.prepare()
        claimed = Claimed(partition, lease, decision, attempt, now_iso())
        files = resolve_parquet_files(partition.uri)
        infos, unreadable = inspect_inputs(files, config.input.columns, config.read.on_unreadable_file, config.storage)
        claimed.group = ScoringGroup(partition.name, files, tuple(infos), tuple(unreadable))
        return claimed
    except Exception as exc:  # noqa: BLE001 - footers are read here: a corrupt file fails its partition only
        release(lease)
        return PartitionOutcome(partition.name, "failed", type(exc).__name__, error=str(exc))


def release(lease: Lease) -> None:
    """Release a lease; a store error leaves it to expire (its heartbeat has stopped) rather than abort the run."""
    try:
        lease.release()
    except OSError as exc:
        print(f"  {lease.partition}: could not release the lease ({exc}); it expires in {lease.settings.ttl_s} s",
              flush=True)


def commit(claimed: Claimed, result: PipelineCounts | str, store: Store, ledger: Ledger, model: ScoringModel,
            predictor: PredictorSettings, scheduled_run_id: str) -> PartitionOutcome:
    name, attempt = claimed.partition.name, claimed.attempt
    if isinstance(result, str):
        attempt.abandon()
        return PartitionOutcome(name, "failed", "ScoringError", error=result)
    manifest = manifest_for(result, list(claimed.group.infos), model, predictor, partition=name,
                            output_version=attempt.number,
                            inputs=fingerprints(claimed.partition, list(claimed.group.infos), claimed.group.unreadable,
                                                store.storage.retry),
                            scheduled_run_id=scheduled_run_id, attempt_id=attempt.attempt_id,
                            started_at=claimed.started, decision=claimed.decision.reason,
                            previous_version=claimed.decision.previous.number if claimed.decision.previous else None)
    try:
        claimed.lease.check()  # fencing: a stalled holder whose lease was taken over must not commit
        if not attempt.commit(manifest):
            attempt.abandon()
            return PartitionOutcome(name, "skipped", f"v{attempt.number} was committed by another instance")
    except (LeaseLost, CommitFailed, OSError) as exc:
        attempt.abandon()
        return PartitionOutcome(name, "failed", type(exc).__name__, error=str(exc))
    try:
        ledger.record(entry_from_manifest(name, attempt.number, attempt.final_uri, manifest))
    except OSError as exc:  # committed all the same: the next run rebuilds the record from the manifest
        print(f"  {name}: committed, but the ledger record was not written ({exc}); the next run repairs it",
              flush=True)
    return PartitionOutcome(name, "scored", claimed.decision.reason, attempt.final_uri, attempt.number,
                            result.rows_in, result.rows_out, result.rows_rejected, result.rejected_by_reason,
                            result.seconds, unreadable=result.unreadable)


def score_chunk(partitions: list[Partition], store: Store, ledger: Ledger, model: ScoringModel,
                config: ScorePartitionsConfig, scheduled_run_id: str,
                owner: dict) -> list[PartitionOutcome]:
    """Claim, score in one streaming pipeline, and commit each of a few partitions independently.

    A partition is committed (and its lease released) the moment all of its rows are written, while
    the pipeline goes on with the others: a run killed or failing midway keeps what it committed.
    """
    outcomes: list[PartitionOutcome] = []
    claimed: dict[str, Claimed] = {}
    committed: dict[str, PartitionOutcome] = {}
    pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV, "0") or 0)

    def commit_done(name: str, result: PipelineCounts | str) -> None:
        if pause > 0:
            time.sleep(pause)
        committed[name] = commit(claimed[name], result, store, ledger, model, config.predictor, scheduled_run_id)
        release(claimed.pop(name).lease)

    try:
        for partition in partitions:
            got = claim(partition, store, model.resolved, config, owner)
            if isinstance(got, Claimed):
                claimed[partition.name] = got
            else:
                outcomes.append(got)
        if not claimed:
            return outcomes
        groups = [c.group for c in claimed.values()]
        print(f"scoring {', '.join(claimed)} ...", flush=True)
        failure = None
        try:
            results = score_groups(groups, {name: c.attempt.write_uri for name, c in claimed.items()}, model, config,
                                   config.input.columns, on_group_done=commit_done)
        except ScoringError as exc:  # the pipeline itself failed: every partition not committed yet failed
            results, failure = {}, str(exc)
        for group in groups:
            name = group.name
            if name not in committed:  # short of rows at the end, or the pipeline failed first: its attempt abandoned
                outcomes.append(commit(claimed[name], results.get(name, failure), store, ledger, model,
                                       config.predictor, scheduled_run_id))
                continue
            outcomes.append(committed[name])
            late = results.get(name)
            if isinstance(late, str) and committed[name].status == "scored":
                print(f"  {name}: rows arrived after its commit ({late}); its committed version lists only the "
                      "files counted before", flush=True)
        return outcomes
    finally:
        for c in claimed.values():
            release(c.lease)



# ---------------------------------------------------------------- the run

@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    model_name: str
    model_version: str
    partitions: list[PartitionOutcome]
    seconds: float
    ledger_repaired: int
    scoring_seconds: float = 0.0  # time inside scoring pipelines (several partitions may share one)

    def with_status(self, status: str) -> list[PartitionOutcome]:
        return [p for p in self.partitions if p.status == status]

    @property
    def failed(self) -> list[PartitionOutcome]:
        return self.with_status("failed")

    def totals(self) -> PipelineCounts:
        scored = self.with_status("scored")
        reasons: dict[str, int] = {}
        for p in scored:
            for k, v in p.rejected_by_reason.items():
                reasons[k] = reasons.get(k, 0) + v
        return PipelineCounts(rows_in=sum(p.rows_in for p in scored), rows_out=sum(p.rows_out for p in scored),
                              rows_rejected=sum(p.rows_rejected for p in scored), rejected_by_reason=reasons,
                              files=[], seconds=self.scoring_seconds,
                              unreadable=tuple(u for p in scored for u in p.unreadable))


def run(config: ScorePartitionsConfig) -> RunOutcome:
    start = time.perf_counter()
    target = prepare_tracking(config.tracking)
    require_shared(config.ray, {"input.path": config.input.path, "output_root": config.output_root,
                                "model": local_model_dir(config.model)}, target.tracking_uri)
    resolved = resolve_model_ref(config.model, target)  # the alias's current version, fixed for this run
    store = Store(config.output_root, config.storage)
    partitions = discover_partitions(config.input.path, config.input.partitions, config.storage)
    ledger = Ledger(store)
    run_name = config.run_name or unique_run_name("score-partitions")
    client = client_for(target)  # the run's client, not the fluent API's active run (see jobs.scoring.batch)
    run_id = client.create_run(target.experiment_id, run_name=run_name,
                               tags={**environment_tags(), "job": "score_partitions"}).info.run_id
    monitor = start_system_metrics(target, run_id, node_id=None, resume=False)
    try:
        result = _run_partitions(config, target, client, resolved, store, ledger, partitions, run_id, run_name,
                                 start)
    except BaseException:
        stop_system_metrics(monitor)
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 -- the run's own error is the one to report
            print(f"WARNING: MLflow run {run_id} could not be marked FAILED ({redact_text(str(exc))})", flush=True)
        raise
    stop_system_metrics(monitor)
    record_run(target, client, result, partitions, config.tracking.outage_tolerance_s)
    return result


def _run_partitions(config: ScorePartitionsConfig, target: TrackingTarget, client,
                    resolved: ResolvedModel, store: Store, ledger: Ledger, partitions: list[Partition],
                    mlflow_run_id: str, run_name: str, start: float) -> RunOutcome:
    log_params(client, mlflow_run_id, redact_mapping({
        "model_ref": config.model, "model_name": resolved.name, "model_version": resolved.version,
        "model_run_id": resolved.run_id, **config_lib.flatten(config_lib.to_dict(config))}))
    owner = {"scheduled_run_id": mlflow_run_id, "run_name": run_name}
    outcomes: list[PartitionOutcome] = []
    repaired = 0
    to_score: list[Partition] = []
    for partition in partitions:
        try:
            versions = committed_versions(store, partition.name)
            repaired += ledger.repair(versions)
            if config.require_input_marker and not has_marker(partition, config.require_input_marker,
                                                                config.storage):
                outcomes.append(PartitionOutcome(partition.name, "skipped", "incomplete"))
                continue
            decision = decide_for(config, versions, fingerprints(partition, retry=config.storage), resolved)
        except FileNotFoundError:
            outcomes.append(PartitionOutcome(partition.name, "skipped", "empty"))
            continue
        except OSError as exc:  # a store error on one partition fails that partition, not the run
            outcomes.append(PartitionOutcome(partition.name, "failed", type(exc).__name__, error=str(exc)))
            print_partition(outcomes[-1])
            continue
        if decision.score:
            to_score.append(partition)
        else:
            outcomes.append(decision.outcome(partition.name))
            if decision.reason != "done":
                print_partition(outcomes[-1])
    done = sum(o.reason == "done" for o in outcomes)
    if done:
        print(f"{done} partition(s) already scored by {resolved.name} version {resolved.version}: skipped",
              flush=True)
    if config.max_partitions is not None and len(to_score) > config.max_partitions:
        outcomes.extend(PartitionOutcome(p.name, "skipped", "deferred (max_partitions)")
                        for p in to_score[config.max_partitions:])
        to_score = to_score[:config.max_partitions]
    if to_score:
        model = ScoringModel.of(resolved, target.tracking_uri)
        init_ray(config.ray)
        check_cpu_budget(config.cpu_demands(model.kind))
    step = max(config.partitions_per_pipeline, 1)
    scoring_seconds = 0.0
    for index in range(0, len(to_score), step):
        chunk_start = time.perf_counter()
        for outcome in score_chunk(to_score[index:index + step], store, ledger, model, config,
                                   mlflow_run_id, owner):
            print_partition(outcome)
            outcomes.append(outcome)
        scoring_seconds += time.perf_counter() - chunk_start
    outcomes.sort(key=lambda o: o.partition)
    return RunOutcome(mlflow_run_id, resolved.name, resolved.version, outcomes, time.perf_counter() - start,
                      repaired, scoring_seconds)


def print_partition(outcome: PartitionOutcome) -> None:
    if outcome.status == "scored":
        print(f"  {outcome.partition}: scored -> {outcome.output} ({outcome.rows_in} in, {outcome.rows_out} out, "
              f"{outcome.rows_rejected} rejected, {outcome.seconds:.1f} s)", flush=True)
        for item in outcome.unreadable:
            print(f"    quarantined {redact_text(item['file'])}: {item['reason']} ({item['rows']} rows not read)",
                  flush=True)
    elif outcome.status == "failed":
        print(f"  {outcome.partition}: FAILED: {redact_text(str(outcome.error))}", flush=True)
    else:
        print(f"  {outcome.partition}: {outcome.status} ({outcome.reason})", flush=True)

