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

Publish: the ``_SUCCESS`` manifest merges the chunk records. Local disks: files no record
lists are deleted, the manifest written, every file and directory fsynced, and the directory
renamed onto the target (``rename(2)`` is atomic); with ``replace`` an existing target is
swapped out in one step (``renameat2(RENAME_EXCHANGE)``). Object stores have no rename: data
files are written under unique names straight into the target and the manifest PUT publishes
them (with ``replace``: switches readers from the old manifest to the new one); unlisted files
are deleted before (those no manifest lists) and after it. A reader relies on ``_SUCCESS``: no
manifest, no output; on object stores it reads exactly the files the manifest lists.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import pyarrow.fs as pafs

from data_pipeline.paths import filesystem_for, join_path
from jobs.common.naming import now_iso
from jobs.scoring.pipeline import output_location
from jobs.scoring.publish import fsync_dir, fsync_file, listed_files, remove_unlisted, replace_dir, sync_tree
from jobs.scoring.sink import MANIFEST, read_json, write_json

STATE, CHUNKS, OUTPUT, INPUT = "state.json", "chunks", "output", "input"


class TargetOccupied(RuntimeError):
    """The run's output directory already holds output and ``replace`` is not set."""


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

    def __init__(self, output_dir: str, run_name: str, replace: bool = False):
        self.target = output_location(output_dir, run_name)
        self.root = output_location(output_dir, f"_staging/{run_name}")
        self.replace = replace
        self.fs, self.target_base = filesystem_for(self.target)
        _, self.root_base = filesystem_for(self.root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def write_uri(self) -> str:
        """Where the pipeline writes data files: the staging area (local), the target itself (object store)."""
        return join_path(self.root, OUTPUT) if self.local else self.target

    @property
    def input_uri(self) -> str:
        return join_path(self.root, INPUT)

    @property
    def _write_base(self) -> str:
        return join_path(self.root_base, OUTPUT) if self.local else self.target_base

    def _list(self, base: str, recursive: bool = False) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def check_target(self) -> None:
        """Refuse a target that holds anything unless ``replace`` is set (before any work is done)."""
        if self.replace:
            return
        entries = self._list(self.target_base)
        if not entries:
            return
        if not self.local and self._exists(join_path(self.root_base, STATE)) \
                and not self._exists(join_path(self.target_base, MANIFEST)):
            return  # object store: the unpublished files of an earlier attempt of this run
        raise TargetOccupied(self._occupied_message())

    def _occupied_message(self) -> str:
        return (f"{self.target} is not empty (an earlier run's output?): set replace=true to replace it "
                "atomically, or choose another run_name or output_dir")

    # ------------------------------------------------------------ progress

    def open(self, fingerprint: dict, inputs: list[dict]) -> list[Chunk]:
        """Start or resume: the chunks an earlier attempt committed that are still valid for ``inputs``."""
        state = read_json(self.fs, join_path(self.root_base, STATE))
        if state is not None and state.get("fingerprint") != fingerprint:
            print(f"{self.root}: the staged progress was made with another model or settings; starting fresh",
                  flush=True)
            state = None
        if state is None:
            self.discard_progress()
            self.fs.create_dir(self.root_base, recursive=True)
            write_json(self.fs, join_path(self.root_base, STATE), {"fingerprint": fingerprint,
                                                                  "created_at": now_iso()})
            if self.local:
                fsync_dir(self.root_base)
            return []
        return self._valid_chunks(inputs)

    def _valid_chunks(self, inputs: list[dict]) -> list[Chunk]:
        current = {fp["file"]: fp for fp in inputs}
        present = {info.path[len(self._write_base.rstrip("/")):].lstrip("/"): info.size
                   for info in self._list(self._write_base, recursive=True) if info.type == pafs.FileType.File}
        chunks: list[Chunk] = []
        covered: set[str] = set()
        for info in sorted(self._list(join_path(self.root_base, CHUNKS)), key=lambda i: i.base_name):
            record = read_json(self.fs, info.path) if info.base_name.endswith(".json") else None
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
                self.fs.delete_file(info.path)
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
            files.append({**entry, "bytes": self.fs.get_file_info(path).size})
        if self.local:
            for folder in {os.path.dirname(join_path(self._write_base, f["path"])) for f in files}:
                fsync_dir(folder)
        record = {**record, "files": files, "committed_at": now_iso()}
        folder = join_path(self.root_base, CHUNKS)
        self.fs.create_dir(folder, recursive=True)
        write_json(self.fs, join_path(folder, f"{name}.json"), record)
        if self.local:
            fsync_dir(folder)
        return Chunk(name, record)

    def has_progress(self) -> bool:
        return any(i.base_name.endswith(".json") for i in self._list(join_path(self.root_base, CHUNKS)))

    def discard_progress(self) -> None:
        """Forget the state and the chunks (a staged input stays): their files become unlisted leftovers."""
        for name in (CHUNKS, OUTPUT) if self.local else (CHUNKS,):
            if self._exists(join_path(self.root_base, name)):
                self.fs.delete_dir(join_path(self.root_base, name))
        if self._exists(join_path(self.root_base, STATE)):
            self.fs.delete_file(join_path(self.root_base, STATE))

    def remove(self) -> None:
        if self._exists(self.root_base):
            self.fs.delete_dir(self.root_base)

    # ------------------------------------------------------------ publish

    def publish(self, manifest: dict) -> None:
        """Make the output visible at the target as ``manifest`` lists it, atomically; then drop the staging."""
        keep = listed_files(manifest)
        if self.local:
            self._publish_local(manifest, keep)
        else:
            self._publish_object_store(manifest, keep)
        self.remove()

    def _publish_local(self, manifest: dict, keep: set[str]) -> None:
        staged = self._write_base
        os.makedirs(staged, exist_ok=True)  # an input of zero rows wrote no file
        remove_unlisted(self.fs, staged, keep)  # retried write tasks', discarded chunks' files
        write_json(self.fs, join_path(staged, MANIFEST), manifest)
        sync_tree(staged)  # every file and directory on disk before the rename makes them visible
        parent = os.path.dirname(self.target_base)
        os.makedirs(parent, exist_ok=True)
        try:
            os.rename(staged, self.target_base)  # atomic; takes the place of an empty directory only
        except OSError:
            if not os.path.isdir(self.target_base) or not os.listdir(self.target_base):
                raise
            if not self.replace:
                raise TargetOccupied(self._occupied_message()) from None
            aside = join_path(self.root_base, "replaced")
            shutil.rmtree(aside, ignore_errors=True)  # a crashed earlier replace's old output
            old = replace_dir(staged, self.target_base, aside)
            fsync_dir(parent)
            shutil.rmtree(old)
        fsync_dir(parent)

    def _publish_object_store(self, manifest: dict, keep: set[str]) -> None:
        base = self.target_base
        old = read_json(self.fs, join_path(base, MANIFEST))
        if old is not None and not self.replace:
            raise TargetOccupied(self._occupied_message())
        # Files no manifest lists go first; those the old manifest lists stay until the switch.
        remove_unlisted(self.fs, base, keep | (listed_files(old) | {MANIFEST} if old is not None else set()))
        write_json(self.fs, join_path(base, MANIFEST), manifest)  # one PUT: the commit (or the switch)
        remove_unlisted(self.fs, base, keep | {MANIFEST})
