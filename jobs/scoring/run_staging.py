"""A batch scoring run's output: staged until complete, resumable after a crash, published atomically.

Layout (``<output_dir>`` a local path or s3://...)::

    <output_dir>/<run_name>/                        the published output: part-*.parquet, _rejected/, _SUCCESS
    <output_dir>/_staging/<run_name>/state.json     what the chunks are scored with (model, settings)
    <output_dir>/_staging/<run_name>/chunks/*.json  one record per committed chunk: its input files
                                                    (fingerprints), its data files (sizes) and row counts
    <output_dir>/_staging/<run_name>/output/        local disks: the data files until publish
    <output_dir>/_staging/<run_name>/input/         a CSV / JSON Lines input staged as Parquet

Resume: the input is scored in chunks of whole files; a chunk's data files are fsynced, then
its record written atomically. A rerun with the same run name keeps the chunks that are still
valid (every input file it lists is in the input with the same size, mtime and row count, and
every data file it lists is there with its recorded size) and scores only the files none of
them covers. A state made with another model or other output-shaping settings is discarded:
the run starts fresh. Files of a discarded chunk, or of a chunk killed mid-write, are listed
by no record and never published.

Publish: the ``_SUCCESS`` manifest merges the chunk records, and ``jobs.scoring.publish.Publication``
makes it visible (the protocol is described there): locally, one ``rename(2)`` of the staged
directory onto the target (with ``replace``, an existing target swapped out in one step); on an
object store, where the data files were written straight into the target under unique names, the
manifest PUT. Unlisted files are never published. A reader relies on ``_SUCCESS``: no manifest, no
output; on object stores it reads exactly the files the manifest lists. A run that fails before
publishing deletes, on an object store, the files it wrote into the target when no chunk of it
was committed (nothing would resume from them); an object-store target without a manifest holds
nothing published, so a rerun of the same name is never refused because of such files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


from data_pipeline.paths import filesystem_for, join_path
from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common.naming import now_iso
from jobs.scoring.pipeline import output_location
from jobs.common.durable import fsync_dir, fsync_file
from jobs.scoring.publish import MANIFEST, Publication, TargetOccupied, remove_unlisted

STATE, CHUNKS, OUTPUT, INPUT = "state.json", "chunks", "output", "input"
__all__ = ["Chunk", "RunStaging", "TargetOccupied", "plan_chunks"]


@dataclass(frozen=True)
class Chunk:
    name: str
    record: dict  # inputs, files, rows_in, rows_out, rows_rejected, rejected_by_reason, seconds, scored_by

    @property
    def input_files(self) -> set[str]:
        return {fp["file"] for fp in self.record["inputs"]}


def plan_chunks(rows: list[int], chunk_rows: int) -> list[list[int]]:
    """Indices of consecutive files packed into chunks of at most ``chunk_rows`` rows (a bigger file alone)."""
    chunks: list[list[int]] = []
    current, total = [], 0
    for index, n in enumerate(rows):
        if current and total + n > chunk_rows:
            chunks.append(current)
            current, total = [], 0
        current.append(index)
        total += n
    if current:
        chunks.append(current)
    return chunks


class RunStaging:
    """The staging area and the target of one named run (see the module docstring)."""

    def __init__(self, output_dir: str, run_name: str, replace: bool = False, retry: StorageRetry = DEFAULT_RETRY):
        self.target = output_location(output_dir, run_name)
        self.root = output_location(output_dir, f"_staging/{run_name}")
        self.replace = replace
        self.fs, self.target_base = filesystem_for(self.target)
        _, self.root_base = filesystem_for(self.root)
        self.storage = Storage(self.fs, retry)
        self.local = self.storage.local
        self.publication = Publication(self.storage, self.target_base,
                                       join_path(self.root_base, OUTPUT) if self.local else None,
                                       occupied_message=self._occupied_message())

    @property
    def write_uri(self) -> str:
        """Where the pipeline writes data files: the staging area (local), the target itself (object store)."""
        return join_path(self.root, OUTPUT) if self.local else self.target

    @property
    def input_uri(self) -> str:
        return join_path(self.root, INPUT)

    @property
    def _write_base(self) -> str:
        return self.publication.write_path

    def check_target(self) -> None:
        """Refuse a target that holds output unless ``replace`` is set (before any work is done).

        Locally anything there is someone's output. On an object store only a manifest publishes
        files: others are unpublished leftovers of an attempt of this run name, deleted at publish.
        """
        if self.replace:
            return
        occupied = self.storage.exists(join_path(self.target_base, MANIFEST)) if not self.local \
            else bool(self.storage.list(self.target_base))
        if occupied:
            raise TargetOccupied(self._occupied_message())

    def _occupied_message(self) -> str:
        return (f"{self.target} is not empty (an earlier run's output?): set replace=true to replace it "
                "atomically, or choose another run_name or output_dir")

    # ------------------------------------------------------------ progress

    def open(self, fingerprint: dict, inputs: list[dict]) -> list[Chunk]:
        """Start or resume: the chunks an earlier attempt committed that are still valid for ``inputs``."""
        state = self.storage.read_json(join_path(self.root_base, STATE))
        if state is not None and state.get("fingerprint") != fingerprint:
            print(f"{self.root}: the staged progress was made with another model or settings; starting fresh",
                  flush=True)
            state = None
        if state is None:
            self.discard_progress()
            self.storage.create_dir(self.root_base)
            self.storage.write_json(join_path(self.root_base, STATE), {"fingerprint": fingerprint,
                                                                      "created_at": now_iso()})
            if self.local:
                fsync_dir(self.root_base)
            return []
        return self._valid_chunks(inputs)

    def _valid_chunks(self, inputs: list[dict]) -> list[Chunk]:
        current = {fp["file"]: fp for fp in inputs}
        present = self.storage.files(self._write_base)
        chunks: list[Chunk] = []
        covered: set[str] = set()
        for info in sorted(self.storage.list(join_path(self.root_base, CHUNKS)), key=lambda i: i.base_name):
            record = self.storage.read_json(info.path) if info.base_name.endswith(".json") else None
            if not isinstance(record, dict) or not {"inputs", "files", "rows_in"} <= record.keys():
                record = None
            chunk = Chunk(info.base_name[:-len(".json")], record) if record is not None else None
            why = None if chunk is not None else "unreadable"
            if why is None and any(current.get(fp["file"]) != fp for fp in record["inputs"]):
                why = "its input files changed or left the input"
            if why is None and any(present.get(f["path"]) != f["bytes"] for f in record["files"]):
                why = "its data files are missing or truncated"
            if why is None and chunk.input_files & covered:
                why = "another chunk covers its input files"
            if why is not None:
                print(f"{info.path}: discarded ({why}); its files are scored again", flush=True)
                self.storage.delete_file(info.path)
                continue
            chunks.append(chunk)
            covered |= chunk.input_files
        return chunks

    def commit_chunk(self, name: str, record: dict) -> Chunk:
        """Make a scored chunk's data files durable, then record it; the record is the chunk's commit."""
        files = []
        for entry in record["files"]:
            path = join_path(self._write_base, entry["path"])
            if self.local:
                fsync_file(path)
            files.append({**entry, "bytes": int(self.storage.info(path).size or 0)})
        if self.local:
            for folder in {os.path.dirname(join_path(self._write_base, f["path"])) for f in files}:
                fsync_dir(folder)
        record = {**record, "files": files, "committed_at": now_iso()}
        folder = join_path(self.root_base, CHUNKS)
        self.storage.create_dir(folder)
        self.storage.write_json(join_path(folder, f"{name}.json"), record)
        if self.local:
            fsync_dir(folder)
        return Chunk(name, record)

    def has_progress(self) -> bool:
        return any(i.base_name.endswith(".json") for i in self.storage.list(join_path(self.root_base, CHUNKS)))

    def discard_progress(self) -> None:
        """Forget the state and the chunks (a staged input stays): their files become unlisted leftovers."""
        for name in (CHUNKS, OUTPUT) if self.local else (CHUNKS,):
            self.storage.delete_dir(join_path(self.root_base, name))
        self.storage.delete_file(join_path(self.root_base, STATE))

    def remove(self) -> None:
        """Drop the staging area and, on an object store, the unpublished files this run wrote into the target."""
        if not self.local and not self.storage.exists(join_path(self.target_base, MANIFEST)):
            remove_unlisted(self.storage, self.target_base, set())
        self.storage.delete_dir(self.root_base)

    # ------------------------------------------------------------ publish

    def publish(self, manifest: dict) -> None:
        """Make the output visible at the target as ``manifest`` lists it, atomically; then drop the staging."""
        self.publication.publish(manifest, existing="replace" if self.replace else "refuse")
        self.storage.delete_dir(self.root_base)
