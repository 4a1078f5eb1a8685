"""Publishing a directory of output files: the one protocol behind every committed output.

Three outputs are published this way: ``batch_infer``'s run output (``jobs.scoring.run_staging``),
``score_partitions``' output versions (``jobs.scoring.ledger``) and ``evaluate``'s scored rows.
Each is a directory of data files plus a ``_SUCCESS`` manifest listing every data file with its
row count; a reader relies on the manifest alone: no manifest, no output; present, it reads
exactly the files it lists.

``Publication.publish(manifest, existing)`` makes the directory visible at its target:

Local and POSIX-shared filesystems (data files were written into a private staging directory on
the target's filesystem):
  1. files the manifest does not list are deleted from the staging directory (a retried write
     task's leftovers, a discarded chunk's files): nothing unlisted is ever published;
  2. the manifest is written (temp + fsync + rename), then every file and directory of the staging
     tree is fsynced (write tasks on other nodes of a shared filesystem included), and the staging
     directory's parent;
  3. the target's parent directories are created and fsynced, then ``rename(2)`` moves the staging
     directory onto the target in one atomic step (it fails on a non-empty target), and both
     parents are fsynced: after a host crash the output is there as its manifest says, or absent.
Object stores (no rename: data files were written straight into the target under names unique
to their write task):
  1. the target's current manifest is read (a failed read is an error, never "absent");
  2. files no manifest lists are deleted (those of the current manifest stay until the switch);
  3. the manifest is written in one PUT, atomic and durable per object: the commit, or the switch
     from the old output to the new one; 4. files the new manifest does not list are deleted.

An occupied target (a valid manifest there, or anything at all on a local disk) is handled as the
caller says: ``refuse`` raises ``TargetOccupied``; ``replace`` swaps it atomically (Linux
``renameat2(RENAME_EXCHANGE)``; elsewhere the old directory is renamed aside first, so the path is
briefly absent, never mixed); ``keep`` returns False when a valid manifest is there (another
attempt committed first) and raises ``CommitFailed`` when something without one is (never
published over silently: readers that list the directory would read its files). Every storage
call goes through ``data_pipeline.storage`` (retried when transient, never misread as absent).
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Literal

import pyarrow.fs as pafs

from data_pipeline.paths import join_path
from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common.durable import fsync_dir, fsync_up, replace_dir, sync_tree

MANIFEST = "_SUCCESS"
Existing = Literal["refuse", "replace", "keep"]


class TargetOccupied(RuntimeError):
    """The target already holds output and the caller did not ask to replace it."""


class CommitFailed(RuntimeError):
    """An output could not be published and no other attempt published it: fail loudly, naming the paths."""


def listed_files(manifest: dict | None) -> set[str]:
    """The data files a manifest lists, relative to its directory."""
    return {entry["path"] for entry in (manifest or {}).get("files", [])}


def valid_manifest(manifest: dict | None) -> bool:
    return isinstance(manifest, dict) and isinstance(manifest.get("files"), list)


def remove_unlisted(storage: Storage, base: str, keep: set[str]) -> list[str]:
    """Delete the files under ``base`` whose path relative to it is not in ``keep``; return them, sorted."""
    removed = sorted(relative for relative in storage.files(base) if relative not in keep)
    for relative in removed:
        storage.delete_file(join_path(base, relative))
    return removed


_AT_FDCWD = -100


def errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return f"{name}: {exc.strerror}" if name else str(exc)


class Publication:
    """One output directory on its way to ``target`` (in-filesystem paths; protocol: module docstring).

    ``staging`` (local filesystems only) is where the data files are written until ``publish``; it must
    be on the target's filesystem. ``root`` bounds the parents fsynced after creating them.
    """

    def __init__(self, storage: Storage, target: str, staging: str | None = None, root: str | None = None,
                 occupied_message: str | None = None):
        if storage.local and staging is None:
            raise ValueError("a local publication needs a staging directory")
        self.storage = storage
        self.target = target.rstrip("/")
        self.staging = staging.rstrip("/") if staging and storage.local else None
        self.root = root or os.path.dirname(self.target)
        self.occupied_message = occupied_message or f"{self.target} already holds output"

    @classmethod
    def on(cls, fs: pafs.FileSystem, target: str, staging: str | None = None, root: str | None = None,
           retry: StorageRetry = DEFAULT_RETRY, occupied_message: str | None = None) -> "Publication":
        return cls(Storage(fs, retry), target, staging, root, occupied_message)

    @property
    def write_path(self) -> str:
        """Where the data files are written: the staging directory (local), the target itself (object store)."""
        return self.staging or self.target

    def current_manifest(self) -> dict | None:
        """The target's manifest when it is a valid one (a failed read raises)."""
        try:
            manifest = self.storage.read_json(join_path(self.target, MANIFEST))
        except NotADirectoryError:  # the target is a file: it holds no manifest
            return None
        return manifest if valid_manifest(manifest) else None

    def publish(self, manifest: dict, existing: Existing = "refuse") -> bool:
        """Make the output visible at the target as ``manifest`` lists it.

        False when another attempt published first (``existing="keep"``): this attempt's files are dropped.
        """
        keep = listed_files(manifest)
        if self.storage.local:
            return self._publish_local(manifest, keep, existing)
        return self._publish_object_store(manifest, keep, existing)

    def abandon(self) -> None:
        """Drop an unpublished attempt's files: its staging directory, or (object store) every unlisted file."""
        if self.staging is not None:
            self.storage.delete_dir(self.staging)
            return
        remove_unlisted(self.storage, self.target, listed_files(self.current_manifest()) | {MANIFEST})

    # ------------------------------------------------------------ local and POSIX filesystems

    def _publish_local(self, manifest: dict, keep: set[str], existing: Existing) -> bool:
        staged, target, storage = self.staging, self.target, self.storage
        storage.create_dir(staged)  # an input of zero rows wrote no file, so no directory yet
        remove_unlisted(storage, staged, keep)
        storage.write_json(join_path(staged, MANIFEST), manifest)
        sync_tree(staged)  # every file on disk in full before the rename makes it visible
        fsync_dir(os.path.dirname(staged))
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        fsync_up(parent, self.root)
        try:
            os.rename(staged, target)  # atomic; takes the place of an empty directory only
        except OSError as exc:
            if not os.path.lexists(target):
                raise CommitFailed(f"could not publish {staged} as {target}: {errno_text(exc)}") from exc
            if not self._occupied(existing, f"could not publish {staged} as {target}: {errno_text(exc)}; "):
                self.abandon()
                return False
            aside = f"{staged}.replaced"
            shutil.rmtree(aside, ignore_errors=True)  # a crashed earlier replace's old output
            old = replace_dir(staged, target, aside)
            fsync_dir(parent)
            shutil.rmtree(old)
        fsync_dir(parent)
        fsync_dir(os.path.dirname(staged))
        return True

    def _occupied(self, existing: Existing, failure: str = "") -> bool:
        """What to do about an occupied target: True to replace it, False when another attempt committed it."""
        if existing == "replace":
            return True
        if existing == "keep":
            if self.current_manifest() is not None:
                return False
            raise CommitFailed(f"{failure}{self.target} exists without a valid {MANIFEST} manifest (deleted by hand, "
                               "or not written by this job): remove that directory, or restore its manifest, "
                               "then run again")
        raise TargetOccupied(self.occupied_message)

    # ------------------------------------------------------------ object stores

    def _publish_object_store(self, manifest: dict, keep: set[str], existing: Existing) -> bool:
        storage, target = self.storage, self.target
        old = self.current_manifest()
        if old is not None or storage.exists(join_path(target, MANIFEST)):
            if not self._occupied(existing):
                self.abandon()  # our files sit in the committed directory: not listed, so they go
                return False
        # Files no manifest lists go first; those the old manifest lists stay until the switch.
        remove_unlisted(storage, target, keep | listed_files(old) | {MANIFEST})
        storage.write_json(join_path(target, MANIFEST), manifest)  # one PUT: the commit (or the switch)
        remove_unlisted(storage, target, keep | {MANIFEST})
        return True
