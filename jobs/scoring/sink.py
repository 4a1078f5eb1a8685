"""Where scored rows go: one streaming write to two locations, and the manifest that commits them.

``SplitScoredWriter`` is the pipeline's last stage (a Ray Data map task after the predictor):
each call splits one block by scoring group (a partition, a chunk of a batch run) and by the
``scorable`` tag into scored rows (``<dir>/part-*.parquet``) and rejected rows
(``<dir>/_rejected/part-*.parquet``, columns ``id``, ``reason``, ``source_file``), one Parquet
file of each kind per group and block, with fixed schemas, and returns what it wrote as a small
table (``STATS_SCHEMA``: one row per group) that streams back to the driver. The driver adds them
up per group (``merge_written``) and commits a group as soon as all of its rows are accounted
for, while the pipeline goes on with the rest. The data is read, scored and written in one pass;
nothing is materialised and no second job re-reads the output to split it.

Each file is written whole in one retried call (``data_pipeline.storage``): a write that fails
with a transient error (503, a reset connection) writes that file again under the same name, and
the task, its other files and the pipeline go on. On local and POSIX-shared filesystems each
write fsyncs the files it wrote, on the node that wrote them (on some shared filesystems only the
writing client can flush its data); the commit syncs the whole directory again from the driver
before publishing it.

An output directory is complete only when its ``_SUCCESS`` manifest exists (``jobs.scoring.publish``
has the protocol); the manifest lists every data file with its row count, so a reader on an object
store (where a half-written attempt's files may sit beside the committed ones) reads exactly the
listed files.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline.paths import filesystem_for, join_path
from data_pipeline.quarantine import FILE_ERROR, GROUP, ID, REJECT_REASON, SCORABLE, SOURCE_FILE, parse_file_error
from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common.durable import fsync_file
from jobs.scoring.publish import MANIFEST

REJECTED_DIR = "_rejected"

_LINEAGE = [pa.field("truncated", pa.bool_()), pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()), pa.field("model_run_id", pa.string()),
            pa.field("source_file", pa.string())]
SCORED_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("label", pa.int64()),
                           pa.field("label_name", pa.string()), pa.field("probability", pa.float32()), *_LINEAGE])
GENERATED_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("generated", pa.string()), *_LINEAGE])
REJECTED_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("reason", pa.string()),
                             pa.field("source_file", pa.string())])

STATS_SCHEMA = pa.schema([pa.field("group", pa.string()), pa.field("written", pa.string())])  # JSON per group


def empty_written() -> dict[str, Any]:
    """What a group has written before any block of it: nothing."""
    return {"files": [], "rows_out": 0, "rows_rejected": 0, "rejected_by_reason": {}, "unreadable": []}


def merge_written(entry: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one block's report for a group to the group's running total (in place; ``sorted_written`` orders it)."""
    entry["files"].extend(part["files"])
    entry["rows_out"] += part["rows_out"]
    entry["rows_rejected"] += part["rows_rejected"]
    reasons = entry["rejected_by_reason"]
    for reason, n in part["rejected_by_reason"].items():
        reasons[reason] = reasons.get(reason, 0) + n
    entry["unreadable"].extend(u for u in part["unreadable"] if u not in entry["unreadable"])


def sorted_written(entry: dict[str, Any]) -> dict[str, Any]:
    """A group's total in a stable order, once it is complete: files by path, reasons by name."""
    return {**entry, "files": sorted(entry["files"], key=lambda f: f["path"]),
            "rejected_by_reason": dict(sorted(entry["rejected_by_reason"].items())),
            "unreadable": sorted(entry["unreadable"], key=lambda u: (u["file"], u["row_groups"] or []))}


class SplitScoredWriter:
    """Write each group's scored and rejected rows of a block to two Parquet files; report them.

    ``outputs`` maps a scoring group (a partition, a chunk; ``""`` for a single input) to the
    directory its rows go to. A file whose read failed part-way (an in-band ``FILE_ERROR`` row) is
    reported in the group's ``unreadable`` list; the caller fails the group (its files are then
    never committed) or quarantines the file, as ``on_unreadable_file`` says.
    """

    def __init__(self, outputs: dict[str, str], compression: str = "zstd", scored_schema: pa.Schema = SCORED_SCHEMA,
                 retry: StorageRetry = DEFAULT_RETRY):
        self.outputs = dict(outputs)
        self.scored_schema = scored_schema
        self.compression = compression
        self.retry = retry
        # Resolved here, on the driver, and pickled into the write tasks: workers need not see the
        # driver's storage settings (AWS_ENDPOINT_URL) to write where the driver meant.
        self.locations = {group: filesystem_for(output) for group, output in self.outputs.items()}

    def create_dirs(self) -> None:
        """On the driver, before the pipeline: every output's folders."""
        for base, fs in {base: fs for fs, base in self.locations.values()}.items():  # chunks share one folder
            Storage(fs, self.retry).create_dir(join_path(base, REJECTED_DIR))

    def __call__(self, block: pa.Table) -> pa.Table:
        """The map task: write one block, return its report (``STATS_SCHEMA``)."""
        written = self.write([block])
        return pa.table({"group": list(written), "written": [json.dumps(w) for w in written.values()]},
                        schema=STATS_SCHEMA)

    def write(self, blocks: Iterable[pa.Table]) -> dict[str, dict[str, Any]]:
        """Write the blocks' rows, one scored and one rejected file per group; each group's report."""
        parts: dict[tuple[str, str], list[pa.Table]] = {}
        stats: dict[str, dict[str, Any]] = {}
        for table in blocks:
            if table.num_rows == 0:
                continue
            groups = table.column(GROUP).unique().to_pylist()
            for group in groups:
                part = table if len(groups) == 1 else table.filter(pc.equal(table.column(GROUP), group))
                self._split_group(group, part, parts, stats)
        # a name per group: groups (a batch run's chunks) may share one folder
        names = {group: f"part-{uuid.uuid4().hex[:16]}.parquet" for group in stats}
        for (group, kind), tables in parts.items():
            relative = names[group] if kind == "scored" else f"{REJECTED_DIR}/{names[group]}"
            schema = self.scored_schema if kind == "scored" else REJECTED_SCHEMA
            self._write_file(group, relative, pa.concat_tables(tables).cast(schema))
            entry = stats[group]
            rows = sum(t.num_rows for t in tables)
            entry["files"].append({"path": relative, "rows": rows, "kind": kind})
            entry["rows_out" if kind == "scored" else "rows_rejected"] += rows
        return stats

    def _write_file(self, group: str, relative: str, table: pa.Table) -> None:
        """One data file, whole, in one retried call; durable before anyone commits it (the commit syncs again)."""
        fs, base = self.locations[group]
        path = join_path(base, relative)
        Storage(fs, self.retry).call(lambda: pq.write_table(table, path, filesystem=fs, compression=self.compression),
                                     f"write {path}")
        if isinstance(fs, pafs.LocalFileSystem):
            fsync_file(path)

    def _split_group(self, group: str, table: pa.Table, parts: dict, stats: dict) -> None:
        """One group's rows of a block: scored rows and rejected rows kept for its two files; counts."""
        if group not in self.outputs:
            raise KeyError(f"rows of unknown scoring group {group!r}")
        entry = stats.setdefault(group, empty_written())
        reason = table.column(REJECT_REASON).cast(pa.string())  # all-null batches arrive typed null
        table = table.set_column(table.schema.get_field_index(REJECT_REASON), REJECT_REASON, reason)
        is_error = pc.fill_null(pc.starts_with(reason, FILE_ERROR), False)
        if pc.any(is_error).as_py():
            entry["unreadable"].extend(parse_file_error(r).as_dict() for r in reason.filter(is_error).to_pylist())
            table = table.filter(pc.invert(is_error))
        ok = table.column(SCORABLE)
        scored = table.filter(ok).select(self.scored_schema.names).cast(self.scored_schema)
        rejected = table.filter(pc.invert(ok))
        rejected = pa.table({"id": rejected.column(ID), "reason": rejected.column(REJECT_REASON),
                             "source_file": rejected.column(SOURCE_FILE)}).cast(REJECTED_SCHEMA)
        for kind, part in (("scored", scored), ("rejected", rejected)):
            if part.num_rows:
                parts.setdefault((group, kind), []).append(part)
        if rejected.num_rows:
            reasons = entry["rejected_by_reason"]
            for item in pc.value_counts(rejected.column("reason")).to_pylist():
                reasons[item["values"]] = reasons.get(item["values"], 0) + item["counts"]


def read_manifest(output: str, retry: StorageRetry = DEFAULT_RETRY) -> dict | None:
    """An output directory's manifest; None when it has none (a failed read raises)."""
    fs, base = filesystem_for(output)
    return Storage(fs, retry).read_json(join_path(base, MANIFEST))


def committed_files(output: str, kind: str = "scored") -> list[str]:
    """Reader contract: the files of a committed output (``kind`` scored or rejected), else []."""
    manifest = read_manifest(output)
    if manifest is None:
        return []
    return [join_path(output, f["path"]) for f in manifest["files"] if f["kind"] == kind]
