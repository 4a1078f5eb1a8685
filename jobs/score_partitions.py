"""Score the input partitions a model alias has not scored yet, exactly once each.

    python -m jobs.score_partitions --config configs/score_partitions.local-cpu.yaml \
        [--set on_new_model_version=rescore] [--set on_changed_inputs=fail]

Meant to run on a schedule (``deploy/``: cron + ``ray job submit``, or a Kubernetes CronJob that
creates KubeRay RayJobs). Each run:

1. resolves the model reference (``models:/name@alias``) to its current version, once;
2. lists the partitions under ``input_root`` matching ``partitions`` (e.g. ``date=*``) and, from
   the committed outputs under ``output_root``, decides for each: score it (new; its input files
   changed since it was scored, by default: ``on_changed_inputs``; scored by an older model
   version, when ``on_new_model_version`` is ``rescore``), skip it (done by this version; stale;
   empty; not marked complete by its producer's ``require_input_marker``) or fail it (inputs
   changed and ``on_changed_inputs`` is ``fail``);
3. takes the partitions to score a few at a time (``partitions_per_pipeline``): takes each
   one's lease (skipping it when another live instance holds it; a store error fails only that
   partition) and decides again under the lease; scores the group with one streaming Ray Data
   pipeline (the one ``jobs.batch_infer`` uses; actors start once per group, not once per
   partition), each partition written to its own staging location; then, partition by
   partition, verifies rows out + rows rejected = rows in, checks the lease is still its own,
   commits atomically and durably (fsynced) as output version ``v<k>`` and records it in the
   ledger (``jobs.scoring.ledger`` documents the layout, the commit protocol and the reader
   contract). A corrupt file, or a commit that fails, fails only its own partition;
4. logs one MLflow run (partitions scored / skipped / failed, rows, model version) and exits
   non-zero naming the failed partitions; a failed partition does not stop the others. The summary
   comes after the commits: when MLflow does not answer within ``tracking.outage_tolerance_s`` it is
   a warning (the ledger has the outcome, which is printed too), and the exit status stays the
   partitions' own.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import pyarrow.fs as pafs

from data_pipeline.paths import filesystem_for, mtime_ns, resolve_parquet_files
from data_pipeline.quarantine import FileInfo, ScoringGroup, UnreadableFile, inspect_inputs
from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common import cli
from jobs.common import config as config_lib
from jobs.common.naming import now_iso, unique_run_name
from jobs.common.ray_runtime import RayConfig, check_cpu_budget, init_ray
from jobs.common.redaction import redact_mapping, redact_text
from jobs.common.registry import ResolvedModel, resolve_model_ref
from jobs.common.datasets import log_datasets, parquet_summary
from jobs.common.shared_storage import local_model_dir, require_shared
from jobs.common.tracking import (DESCRIPTION_TAG, TrackingConfig, TrackingTarget, client_for, environment_tags,
                                  log_params, prepare_tracking, start_system_metrics, stop_system_metrics)
from jobs.common.tracking_retry import OutageRetry
from jobs.scoring.ledger import (Attempt, CommitFailed, Lease, LeaseLost, LeaseSettings, Ledger, OutputVersion,
                                Store, committed_versions, entry_from_manifest)
from jobs.scoring.pipeline import (PipelineCounts, ScoringError, ScoringModel, counts_metrics, manifest_for,
                                   score_groups, summary_line)
from jobs.scoring.predictors import PredictorSettings
from jobs.scoring.settings import ScoringSettings

# Fault injection for tests: seconds to wait after a partition's rows are written and before it
# is committed, so a test can kill the job at the worst moment.
PAUSE_BEFORE_COMMIT_ENV = "SCORE_PARTITIONS_PAUSE_BEFORE_COMMIT_S"


@dataclass(frozen=True, kw_only=True)
class ScorePartitionsConfig(ScoringSettings):
    EXAMPLE_OVERRIDE: ClassVar[str] = "max_partitions=2"  # --help's --set example (a unit test loads it)
    input_root: str = "data/incoming"  # local path or s3://...
    partitions: str = "date=*"  # glob of partition directories under input_root; "/" separates levels
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


# ---------------------------------------------------------------- discovery and planning

@dataclass(frozen=True)
class Partition:
    name: str  # relative to input_root, e.g. "date=2026-11-25"
    uri: str


def discover_partitions(input_root: str, pattern: str, retry: StorageRetry = DEFAULT_RETRY) -> list[Partition]:
    """Directories under ``input_root`` whose relative path matches ``pattern`` level by level.

    Lists one directory level per pattern segment, so the input files themselves are never listed.
    """
    fs, base = filesystem_for(input_root)
    storage = Storage(fs, retry)
    base = base.rstrip("/")
    prefix = input_root.split("://", 1)[0] + "://" if "://" in input_root else ""
    candidates = [""]
    for segment in pattern.strip("/").split("/"):
        found = []
        for rel in candidates:
            for info in storage.list(f"{base}/{rel}".rstrip("/")):
                name = info.base_name
                if info.type == pafs.FileType.Directory and fnmatch.fnmatchcase(name, segment) \
                        and not name.startswith(("_", ".")):
                    found.append(f"{rel}/{name}".lstrip("/"))
        candidates = found
    return [Partition(rel, f"{prefix}{base}/{rel}") for rel in sorted(candidates)]


def fingerprints(partition: Partition, infos: list[FileInfo] | None = None,
                 unreadable: tuple[UnreadableFile, ...] = (), retry: StorageRetry = DEFAULT_RETRY) -> list[dict]:
    """Size, mtime (and rows, when the footers were read) of each input file, relative to the partition.

    Quarantined files are inputs too (stat only): a partition does not look changed for holding one.
    """
    listed = []
    if infos is None or unreadable:
        files = resolve_parquet_files(partition.uri)
        stats = Storage(files.filesystem, retry).call(lambda: files.filesystem.get_file_info(list(files.paths)),
                                                      f"stat the files of {partition.uri}")
        listed = [(files.uri_prefix + s.path, int(s.size or 0), mtime_ns(s), None) for s in stats]
    if infos is None:
        rows = listed
    else:
        bad = {u.file for u in unreadable}
        rows = [(i.display, i.size, i.mtime_ns, i.num_rows) for i in infos] + [r for r in listed if r[0] in bad]
    out = []
    for display, size, modified_ns, n in rows:
        rel = display[len(partition.uri):].lstrip("/") if display.startswith(partition.uri) else display
        item = {"file": rel, "size": size, "mtime_ns": modified_ns}
        if n is not None:
            item["rows"] = n
        out.append(item)
    return sorted(out, key=lambda f: f["file"])


def same_inputs(a: list[dict], b: list[dict]) -> bool:
    key = lambda f: (f["file"], f["size"], f["mtime_ns"])  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


@dataclass(frozen=True)
class Decision:
    score: bool
    reason: str  # new, done, stale_model, changed_inputs, rescore_model, rescore_inputs
    previous: OutputVersion | None = None
    fail: bool = False  # changed inputs with on_changed_inputs=fail: the partition fails, loudly

    def outcome(self, partition: str) -> "PartitionOutcome":
        """The outcome of a partition not scored: skipped, or failed."""
        if not self.fail:
            return PartitionOutcome(partition, "skipped", self.reason)
        previous = f"v{self.previous.number}" if self.previous else "its output"
        return PartitionOutcome(partition, "failed", self.reason,
                                error=f"input files changed since {previous} was scored (on_changed_inputs=fail); "
                                      "set on_changed_inputs=rescore to score them again into a new version")


def decide(versions: list[OutputVersion], inputs: list[dict], model: ResolvedModel,
           on_changed_inputs: str = "rescore", on_new_model_version: str = "skip") -> Decision:
    """Whether to score a partition, given its committed versions and its current input files.

    Changed inputs are checked first: rows that were never scored must not hide behind a stale
    model version (rescored, they are scored by the current version).
    """
    mine = [v for v in versions if v.model.get("name") == model.name]
    if not mine:
        return Decision(True, "new")
    latest = mine[-1]
    model_moved = str(latest.model.get("version")) != model.version
    if not same_inputs(latest.manifest.get("inputs", []), inputs):
        if on_changed_inputs == "fail":
            return Decision(False, "changed_inputs", latest, fail=True)
        if on_changed_inputs == "rescore":
            return Decision(True, "rescore_inputs", latest)
        if not (model_moved and on_new_model_version == "rescore"):
            return Decision(False, "changed_inputs", latest)
    if model_moved:
        return Decision(on_new_model_version == "rescore",
                        "rescore_model" if on_new_model_version == "rescore" else "stale_model", latest)
    return Decision(False, "done", latest)


def decide_for(config: "ScorePartitionsConfig", versions: list[OutputVersion], inputs: list[dict],
               model: ResolvedModel) -> Decision:
    return decide(versions, inputs, model, config.changed_inputs_policy, config.new_model_policy)


# ---------------------------------------------------------------- one partition

@dataclass
class PartitionOutcome:
    partition: str
    status: str  # scored, skipped, busy, failed
    reason: str = ""
    output: str | None = None
    output_version: int | None = None
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    unreadable: tuple = ()  # quarantined input files (read.on_unreadable_file: quarantine)


@dataclass
class _Claimed:
    partition: Partition
    lease: Lease
    decision: Decision
    attempt: Attempt
    started: str
    group: ScoringGroup | None = None


def _claim(partition: Partition, store: Store, resolved: ResolvedModel, config: ScorePartitionsConfig,
           owner: dict) -> _Claimed | PartitionOutcome:
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
            _release(lease)
            return decision.outcome(partition.name)
        number = max((v.number for v in versions), default=0) + 1
        attempt = Attempt(store, partition.name, number, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
        attempt.prepare()
        claimed = _Claimed(partition, lease, decision, attempt, now_iso())
        files = resolve_parquet_files(partition.uri)
        infos, unreadable = inspect_inputs(files, config.input_columns, config.read.on_unreadable_file, config.storage)
        claimed.group = ScoringGroup(partition.name, files, tuple(infos), tuple(unreadable))
        return claimed
    except Exception as exc:  # noqa: BLE001 - footers are read here: a corrupt file fails its partition only
        _release(lease)
        return PartitionOutcome(partition.name, "failed", type(exc).__name__, error=str(exc))


def _release(lease: Lease) -> None:
    """Release a lease; a store error leaves it to expire (its heartbeat has stopped) rather than abort the run."""
    try:
        lease.release()
    except OSError as exc:
        print(f"  {lease.partition}: could not release the lease ({exc}); it expires in {lease.settings.ttl_s} s",
              flush=True)


def _commit(claimed: _Claimed, result: PipelineCounts | str, store: Store, ledger: Ledger, model: ScoringModel,
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
    """Claim, score in one streaming pipeline, and commit each of a few partitions independently."""
    outcomes: list[PartitionOutcome] = []
    claimed: list[_Claimed] = []
    try:
        for partition in partitions:
            got = _claim(partition, store, model.resolved, config, owner)
            (claimed if isinstance(got, _Claimed) else outcomes).append(got)
        if not claimed:
            return outcomes
        print(f"scoring {', '.join(c.partition.name for c in claimed)} ...", flush=True)
        try:
            results = score_groups([c.group for c in claimed], {c.partition.name: c.attempt.write_uri for c in claimed},
                                   model, config, config.input_columns)
        except ScoringError as exc:  # the pipeline itself failed: every partition in it failed
            results = {c.partition.name: str(exc) for c in claimed}
        pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV, "0") or 0)
        for c in claimed:
            if pause > 0:
                time.sleep(pause)
            outcomes.append(_commit(c, results[c.partition.name], store, ledger, model, config.predictor,
                                    scheduled_run_id))
        return outcomes
    finally:
        for c in claimed:
            _release(c.lease)


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
    require_shared(config.ray, {"input_root": config.input_root, "output_root": config.output_root,
                                "model": local_model_dir(config.model)}, target.tracking_uri)
    resolved = resolve_model_ref(config.model, target)  # the alias's current version, fixed for this run
    store = Store(config.output_root, config.storage)
    partitions = discover_partitions(config.input_root, config.partitions, config.storage)
    ledger = Ledger(store)
    run_name = config.run_name or unique_run_name("score-partitions")
    client = client_for(target)  # the run's client, not the fluent API's active run (see jobs.batch_infer)
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
    _record_run(target, client, result, partitions, config.tracking.outage_tolerance_s)
    return result


def _record_run(target: TrackingTarget, client, result: RunOutcome, partitions: list[Partition],
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
            if config.require_input_marker and not _has_marker(partition, config.require_input_marker,
                                                                config.storage):
                outcomes.append(PartitionOutcome(partition.name, "skipped", "incomplete"))
                continue
            decision = decide_for(config, versions, fingerprints(partition, retry=config.storage), resolved)
        except FileNotFoundError:
            outcomes.append(PartitionOutcome(partition.name, "skipped", "empty"))
            continue
        except OSError as exc:  # a store error on one partition fails that partition, not the run
            outcomes.append(PartitionOutcome(partition.name, "failed", type(exc).__name__, error=str(exc)))
            _print_partition(outcomes[-1])
            continue
        if decision.score:
            to_score.append(partition)
        else:
            outcomes.append(decision.outcome(partition.name))
            if decision.reason != "done":
                _print_partition(outcomes[-1])
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
            _print_partition(outcome)
            outcomes.append(outcome)
        scoring_seconds += time.perf_counter() - chunk_start
    outcomes.sort(key=lambda o: o.partition)
    return RunOutcome(mlflow_run_id, resolved.name, resolved.version, outcomes, time.perf_counter() - start,
                      repaired, scoring_seconds)


def _has_marker(partition: Partition, marker: str, retry: StorageRetry = DEFAULT_RETRY) -> bool:
    fs, path = filesystem_for(f"{partition.uri}/{marker}")
    return Storage(fs, retry).info(path).type == pafs.FileType.File


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


def _print_partition(outcome: PartitionOutcome) -> None:
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


@cli.entry_point("scheduled scoring", known=(ScoringError,))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(ScorePartitionsConfig, __doc__.splitlines()[0], argv)
    result = run(config)
    counts = result.totals()
    by_status: dict[str, int] = {}
    for p in result.partitions:
        by_status[p.status] = by_status.get(p.status, 0) + 1
    print("\n=== scheduled scoring finished ===")
    print(f"model {result.model_name} version {result.model_version}; partitions: "
          + (", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none found"))
    print(summary_line(counts) + f"; run took {result.seconds:.1f} s; MLflow run {result.run_id}")
    for reason, setting, what in (("stale_model", "on_new_model_version", "by an older model version"),
                                  ("changed_inputs", "on_changed_inputs", "from input files that changed since")):
        stale = [p.partition for p in result.partitions if p.status == "skipped" and p.reason == reason]
        if stale:
            print(f"{len(stale)} partition(s) were scored {what}; --set {setting}=rescore scores them again: "
                  f"{', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}")
    if result.failed:
        print(f"\n{len(result.failed)} partition(s) FAILED:", file=sys.stderr)
        for p in result.failed:
            print(f"  {p.partition}: {redact_text(str(p.error))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
