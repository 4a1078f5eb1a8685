"""The streaming scoring pipeline: read + tag bad rows -> tokenize -> predict -> split write.

``score_groups`` runs one Ray Data pipeline over one or more groups of input files (a single
input, a batch run's chunks, a scheduled run's partitions) and returns each group's row counts,
reporting each group as soon as all its rows are written; committing the output (a chunk's
record, the ``_SUCCESS`` manifest, the ledger) is the caller's step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from data_pipeline.paths import ParquetFiles, join_path
from data_pipeline.quarantine import (TAG_COLUMNS, FileInfo, InputColumns, ScoringGroup, ScoringSource,
                                      UnreadableFile, describe_failure)
from jobs.common.naming import now_iso
from jobs.common.registry import ModelKind, ResolvedModel, materialize_model, model_kind, resolve_model_ref
from jobs.kinds import kind_spec
from jobs.scoring.predictors import PredictorSettings
from jobs.scoring.settings import PipelineSettings
from jobs.scoring.sink import SplitScoredWriter, empty_written, merge_written, sorted_written


@dataclass(frozen=True)
class ScoringModel:
    """A model resolved once on the driver; ``local_dir`` is reused by workers that can see it."""
    resolved: ResolvedModel
    tracking_uri: str | None
    local_dir: str
    kind: ModelKind  # classifier: label + probability per row; seq2seq: the decoded text

    @classmethod
    def load(cls, ref: str, target) -> "ScoringModel":
        return cls.of(resolve_model_ref(ref, target), target.tracking_uri if target is not None else None)

    @classmethod
    def of(cls, resolved: ResolvedModel, tracking_uri: str | None) -> "ScoringModel":
        local_dir = materialize_model(resolved, tracking_uri)
        kind = model_kind(local_dir)
        if kind is None:
            raise FileNotFoundError(f"{resolved.load_uri}: neither a Hugging Face classifier (config.json) "
                                    "nor a seq2seq export (seq2seq_config.json)")
        return cls(resolved, tracking_uri, str(local_dir), kind)


@dataclass(frozen=True)
class PipelineCounts:
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    files: list[dict]
    seconds: float  # from the pipeline's start to the last of these rows written
    unreadable: tuple[dict, ...] = ()  # quarantined input files (``UnreadableFile.as_dict``)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_unreadable(self) -> int:
        """Rows of quarantined files that were not read (a file whose footer failed counted none: unknown)."""
        return sum(u["rows"] or 0 for u in self.unreadable)

    def balanced(self) -> bool:
        """Every row in was scored, rejected or counted unreadable, exactly once."""
        return self.rows_out + self.rows_rejected + self.rows_unreadable == self.rows_in


class ScoringError(RuntimeError):
    """A scoring pipeline failed; the message names the bad input file when one is to blame."""


def output_location(output_dir: str, name: str) -> str:
    return join_path(output_dir if "://" in output_dir else str(Path(output_dir).resolve()), name)


def _test_env() -> dict:
    """The predictors' fault-injection delay, for actors of a cluster that do not see the driver's environment."""
    from jobs.common.injected_delay import delay_env
    from jobs.scoring.predictors import PREDICT_DELAY_ENV

    env = delay_env(PREDICT_DELAY_ENV)
    return {"runtime_env": {"env_vars": env}} if PREDICT_DELAY_ENV in env else {}


GroupResult = Union[PipelineCounts, str]  # a group's counts, or why it failed


def score_groups(groups: list[ScoringGroup], outputs: dict[str, str], model: ScoringModel,
                 settings: PipelineSettings, columns: InputColumns,
                 on_group_done: Callable[[str, GroupResult], None] | None = None) -> dict[str, GroupResult]:
    """One streaming pipeline for several groups of files (partitions, chunks), each written to its own output.

    read+tag -> tokenize -> predict -> split write. Returns, per group, its row counts or the
    error that failed it (a corrupt file named; rows out + rejected != rows in). Raises
    ``ScoringError`` when the pipeline itself fails. Never writes a manifest: committing is the
    caller's step, so a failed or killed run's output is never mistaken for a complete one.

    ``on_group_done`` is called on the driver with a group's result as soon as every one of its
    rows is accounted for, while the pipeline goes on with the others (its actors stay loaded):
    a caller commits there what is done. What it raises stops the pipeline and propagates as it is.
    """
    spec = kind_spec(model.kind)  # jobs.kinds: the kind's checks, stages, predictor and output columns
    refused = spec.check_scoring(settings, columns, model.local_dir)
    if refused:
        raise ScoringError(refused)
    start = time.perf_counter()
    progress = _GroupProgress(groups, outputs, settings.read.on_unreadable_file, start)
    report = on_group_done or (lambda name, result: None)
    for name, result in progress.empty_groups():  # nothing to read: no pipeline
        report(name, result)
    if progress.pending():
        writer = SplitScoredWriter(outputs, compression=settings.sink.compression, scored_schema=spec.scored_schema,
                                   retry=settings.storage)
        writer.create_dirs()
        reports = _reports([g for g in groups if g.rows], writer, model, settings, columns, spec)
        try:
            for batch in reports:
                for name, result in progress.add(batch):
                    report(name, result)
        finally:
            reports.close()  # an early exit (the caller's error) stops the pipeline's tasks
    return progress.results()


def _reports(*pipeline_args):
    """The writer's reports as the pipeline streams them; a pipeline failure as a ``ScoringError``."""
    batches = None
    try:
        batches = iter(_pipeline(*pipeline_args))
        yield from batches
    except Exception as exc:  # Ray wraps worker errors; surface the file that caused them
        raise ScoringError(describe_failure(exc)) from exc
    finally:
        getattr(batches, "close", lambda: None)()


def _pipeline(groups: list[ScoringGroup], writer: SplitScoredWriter, model: ScoringModel,
              settings: PipelineSettings, columns: InputColumns, spec):
    """The Ray Data pipeline, streamed: an iterator of the writer's reports (``STATS_SCHEMA`` tables)."""
    import ray.data

    stages, predictor = settings.stages, settings.predictor
    common = {"resolved": model.resolved, "tracking_uri": model.tracking_uri, "local_model_dir": model.local_dir}
    # read tasks go in group order: on a big input the groups finish (and are committed) about in turn
    ds = ray.data.read_datasource(ScoringSource(groups, columns, settings.read, settings.storage),
                                  override_num_blocks=max(stages.min_blocks, 1), num_cpus=stages.read_cpus)
    tokenize = {"text_column": columns.text, "max_length": settings.max_length,
                "keep_columns": list(TAG_COLUMNS), **({"pair_column": columns.pair} if spec.reads_pairs else {})}
    if not settings.tokenize_stage(model.kind):
        predictor_class, predictor_kwargs, batch_format = spec.predictor, tokenize, "pyarrow"
    else:
        ds = ds.map_batches(spec.tokenize_stage, fn_kwargs={**common, **tokenize},
                            batch_format="pyarrow", batch_size=stages.tokenize_batch_rows,
                            compute=ray.data.TaskPoolStrategy(size=stages.tokenize_concurrency),
                            num_cpus=stages.tokenize_cpus)
        predictor_class, predictor_kwargs, batch_format = spec.staged_predictor, {}, "numpy"
    ds = ds.map_batches(predictor_class, fn_constructor_kwargs={**common, **predictor_kwargs,
                                                                "settings": predictor},
                        batch_size=predictor.rows_per_call, batch_format=batch_format,
                        compute=ray.data.ActorPoolStrategy(size=predictor.concurrency),
                        num_cpus=predictor.num_cpus, num_gpus=predictor.num_gpus, **_test_env())
    ds = ds.map_batches(writer, batch_size=None, batch_format="pyarrow", num_cpus=settings.sink.num_cpus)
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


class _GroupProgress:
    """Each group's written files and counts as the writer's reports stream in; when each is complete."""

    def __init__(self, groups: list[ScoringGroup], outputs: dict[str, str], on_unreadable_file: str, start: float):
        self.groups = {g.name: g for g in groups}
        self.outputs = outputs
        self.on_unreadable_file = on_unreadable_file
        self.start = start
        self.written = {g.name: empty_written() for g in groups}
        self.done: dict[str, GroupResult] = {}
        self.late: set[str] = set()  # rows arrived after their group was complete: duplicated

    def empty_groups(self) -> list[tuple[str, GroupResult]]:
        return [(name, self._finish(name)) for name, g in self.groups.items() if not g.rows]

    def pending(self) -> bool:
        return len(self.done) < len(self.groups)

    def add(self, batch) -> list[tuple[str, GroupResult]]:
        """One report of the writer; the groups it completes, with their results."""
        completed = []
        for name, written in zip(batch.column("group").to_pylist(), batch.column("written").to_pylist()):
            if name in self.done:
                self.late.add(name)
                continue
            merge_written(self.written[name], json.loads(written))
            if self._counts(name).balanced():
                completed.append((name, self._finish(name)))
        return completed

    def results(self) -> dict[str, GroupResult]:
        """Every group's result once the pipeline has ended (those still open are short of rows)."""
        results = {name: self.done.get(name) or self._result(name) for name in self.groups}
        for name in self.late:
            results[name] = f"{self.outputs[name]}: rows arrived after all {self.groups[name].rows} rows in " \
                            "were written: rows were duplicated"
        return results

    def _finish(self, name: str) -> GroupResult:
        self.done[name] = self._result(name)
        return self.done[name]

    def _counts(self, name: str, written: dict | None = None) -> PipelineCounts:
        group, written = self.groups[name], written or self.written[name]
        return PipelineCounts(rows_in=group.rows, rows_out=written["rows_out"], rows_rejected=written["rows_rejected"],
                              rejected_by_reason=written["rejected_by_reason"], files=written["files"],
                              seconds=time.perf_counter() - self.start,
                              unreadable=tuple(u.as_dict() for u in group.unreadable) + tuple(written["unreadable"]))

    def _result(self, name: str) -> GroupResult:
        written = sorted_written(self.written[name])  # once per group, not on every report
        counts = self._counts(name, written)
        if written["unreadable"] and self.on_unreadable_file == "fail":
            return "; ".join(f"{u['file']}: {u['reason']}" for u in written["unreadable"])
        if not counts.balanced():
            unread = f" + {counts.rows_unreadable} unreadable" if counts.unreadable else ""
            return (f"{self.outputs[name]}: {counts.rows_out} rows scored + {counts.rows_rejected} "
                    f"rejected{unread} != {counts.rows_in} rows in: rows were lost or duplicated")
        return counts


def score_files(files: ParquetFiles, infos: list[FileInfo], output: str, model: ScoringModel,
                settings: PipelineSettings, columns: InputColumns,
                unreadable: tuple[UnreadableFile, ...] = ()) -> PipelineCounts:
    """Score one input into ``output``; raises ``ScoringError`` naming the bad file, if any."""
    result = score_groups([ScoringGroup("", files, tuple(infos), unreadable)], {"": output}, model, settings,
                          columns)[""]
    if isinstance(result, str):
        raise ScoringError(result)
    return result


def manifest_for(counts: PipelineCounts, infos: list[FileInfo], model: ScoringModel, predictor: PredictorSettings,
                 **extra) -> dict:
    return {"rows_in": counts.rows_in, "rows_out": counts.rows_out, "rows_rejected": counts.rows_rejected,
            "rejected_by_reason": counts.rejected_by_reason, "files": counts.files,
            "rows_unreadable": counts.rows_unreadable, "unreadable_files": list(counts.unreadable),
            "inputs": [info.fingerprint() for info in infos],
            "model": {"name": model.resolved.name, "version": model.resolved.version,
                      "run_id": model.resolved.run_id, "kind": model.kind},
            "scored_with": predictor.numerics(),  # int8 or bf16 scores differ slightly from fp32 ones
            "seconds": round(counts.seconds, 3), "committed_at": now_iso(),
            **extra}


def summary_line(counts: PipelineCounts) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in counts.rejected_by_reason.items())
    files = {u["file"] for u in counts.unreadable}
    unread = f"; {len(files)} unreadable file(s) quarantined ({counts.rows_unreadable} rows not read)" if files else ""
    return (f"rows in {counts.rows_in}, out {counts.rows_out}, rejected {counts.rows_rejected}"
            f"{f' ({reasons})' if reasons else ''}{unread}; {counts.rows_per_s:.0f} rows/s over {counts.seconds:.1f} s")


def counts_metrics(counts: PipelineCounts) -> dict[str, float]:
    metrics = {"rows_in": counts.rows_in, "rows_out": counts.rows_out, "rows_rejected": counts.rows_rejected,
               "rows_per_s": counts.rows_per_s, "seconds": counts.seconds,
               "files_unreadable": len({u["file"] for u in counts.unreadable}),
               "rows_unreadable": counts.rows_unreadable}
    metrics.update({f"rows_rejected_{reason}": n for reason, n in counts.rejected_by_reason.items()})
    return metrics
