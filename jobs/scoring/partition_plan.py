"""Which partitions a scheduled run finds, and what it decides for each (``jobs.scoring.partitions`` acts on it).

A partition is a directory under the input root matching the pattern level by level. Its decision comes from
its committed output versions and its current input files: score it (new; inputs changed; scored by an older
model version, when asked to rescore), skip it (done; stale; changed, when told to skip) or fail it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from data_pipeline.paths import filesystem_for, mtime_ns, resolve_parquet_files
from data_pipeline.quarantine import FileInfo, UnreadableFile
from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common.registry import ResolvedModel
from jobs.scoring.ledger import OutputVersion


@dataclass(frozen=True)
class Partition:
    name: str  # relative to the root (score_partitions' input.path), e.g. "date=2026-11-25"
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


def has_marker(partition: Partition, marker: str, retry: StorageRetry = DEFAULT_RETRY) -> bool:
    fs, path = filesystem_for(f"{partition.uri}/{marker}")
    return Storage(fs, retry).info(path).type == pafs.FileType.File

