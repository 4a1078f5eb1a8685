"""Exactly-once bookkeeping for scheduled scoring: output versions, commits, leases and the ledger.

Layout under an output root (local path or s3://...)::

    <root>/<partition>/v<k>/part-*.parquet        committed output version k of a partition
    <root>/<partition>/v<k>/_rejected/part-*.parquet
    <root>/<partition>/v<k>/_SUCCESS              the commit marker: a JSON manifest (files, counts,
                                                  input fingerprints, model name/version/run id)
    <root>/_staging/<partition key>/<attempt>/    work in progress (local filesystems)
    (a partition key is the partition path with ``%`` and ``/`` percent-encoded: ``y=2026%2Fm=11``)
    <root>/_leases/<partition key>/<generation>.json   who is scoring a partition, until when
    <root>/_ledger/<partition key>/v<k>.json      one record per committed output version

Reader contract (``committed_outputs`` implements it):
  * an output version directory exists for readers only when its ``_SUCCESS`` manifest exists;
  * read exactly the files the manifest lists (on local disks that is every file in the
    directory; on object stores a killed attempt may leave unlisted files beside them);
  * the current output of a partition is its highest committed ``v<k>``; older versions stay
    readable and are never modified;
  * anything under a name starting with ``_`` (staging, leases, ledger, rejected rows) is not
    scored output (pyarrow and Spark skip such paths by default).

Commit: an attempt publishes its output version with ``jobs.scoring.publish.Publication`` (the
protocol, local and object store, is described there once) in ``keep`` mode: on a local or
POSIX-shared filesystem the attempt writes into a private staging directory and the commit is
one ``rename(2)`` to ``v<k>``, which fails when ``v<k>`` already exists, so at most one attempt
ever commits a version. A failed rename means "committed by another instance" only when ``v<k>``
now holds a valid manifest; any other failure (EACCES, ENOSPC, EXDEV, a ``v<k>`` without a valid
manifest, e.g. one whose ``_SUCCESS`` an operator deleted) fails the partition loudly
(``CommitFailed``), naming the paths and the errno: such a ``v<k>`` is never skipped over
silently, since readers that list the partition directory (Spark, pyarrow) would read its files;
an operator removes it or restores its manifest. Object stores have no atomic directory rename:
there the attempt writes straight into ``v<k>`` under file names unique to the attempt, and the
``_SUCCESS`` PUT is the commit; leftovers of killed attempts are unlisted and deleted by the next
attempt (before it scores) and by the commit.

Storage errors are errors (``data_pipeline.storage``): a read that fails with a transient error is
retried, and one that still fails fails the partition; it never reads as "absent", so a committed
version is never taken for a free version number and a lease is not lost to one failed read.

The manifest is the source of truth; the ledger is an index of manifests, rebuilt from them
when a run died between commit and ledger write (``Ledger.repair``).

Leases: one file per generation, created exclusively (``link(2)`` of a fully written temp file,
so it is never seen half written). The holder renews it from a heartbeat thread; a lease is
stale when it expired, was released, or names a process on this host that no longer runs
(a SIGKILLed run is taken over at once, not after the expiry). Taking over creates the next
generation, which fences the previous holder: before committing, a holder checks that no newer
generation exists. On object stores exclusive create is emulated (check, write, read back),
which narrows but does not close the race; the commit rules above still keep readers
exactly-once, at worst at the cost of scoring a partition twice.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from data_pipeline.paths import filesystem_for, join_path
from data_pipeline.storage import DEFAULT_RETRY, Storage, StorageRetry
from jobs.common.naming import now_iso
from jobs.scoring.publish import MANIFEST, CommitFailed, Publication, valid_manifest

STAGING, LEASES, LEDGER = "_staging", "_leases", "_ledger"
_VERSION = re.compile(r"^v(\d+)$")


def partition_key(partition: str) -> str:
    """A flat, file-name-safe key for a partition path such as ``date=2026-11-25`` or ``y=2026/m=11``.

    Injective: ``%`` and ``/`` are percent-encoded (``y=2026%2Fm=11``), so ``a/b`` and ``a__b`` (or
    ``a%2Fb``) get different keys and never share a lease, a staging directory or ledger records.
    Single-level names without ``%`` keep their own name as the key.
    """
    return partition.strip("/").replace("%", "%25").replace("/", "%2F")


class Store:
    """The output root on its filesystem, with the few primitives the protocol needs (all retried)."""

    def __init__(self, root: str, retry: StorageRetry = DEFAULT_RETRY):
        self.root = root.rstrip("/")
        self.fs, self.base = filesystem_for(self.root)
        self.storage = Storage(self.fs, retry)
        self.local = self.storage.local
        self.uri_prefix = self.root[:self.root.index("://") + 3] if "://" in self.root else ""

    def uri(self, *parts: str) -> str:
        return self.uri_prefix + join_path(self.base, *parts) if self.uri_prefix else join_path(self.base, *parts)

    def path(self, *parts: str) -> str:
        return join_path(self.base, *parts)

    def listdir(self, *parts: str) -> list[pafs.FileInfo]:
        return self.storage.list(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.storage.exists(self.path(*parts))

    def read_json(self, *parts: str) -> dict | None:
        """None when absent; a read that fails raises (never "absent")."""
        return self.storage.read_json(self.path(*parts))

    def write_json(self, payload: dict, *parts: str) -> None:
        self.storage.create_dir(self.path(*parts[:-1]))
        self.storage.write_json(self.path(*parts), payload)

    def create_exclusive(self, payload: dict, *parts: str) -> bool:
        """Create a JSON file only if absent; True when this call created it."""
        import json

        path = self.path(*parts)
        self.storage.create_dir(self.path(*parts[:-1]))
        if self.local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # atomic, fails if the name exists; the file is complete when seen
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.exists(*parts):  # object store: best effort (see the module docstring)
            return False
        self.storage.write_json(path, payload)
        time.sleep(0.2)
        current = self.read_json(*parts)
        return current is not None and current.get("token") == payload.get("token")

    def delete_dir(self, *parts: str) -> None:
        self.storage.delete_dir(self.path(*parts))

    def delete_file(self, *parts: str) -> None:
        self.storage.delete_file(self.path(*parts))


# ---------------------------------------------------------------- output versions and commits

@dataclass(frozen=True)
class OutputVersion:
    partition: str
    number: int
    uri: str
    manifest: dict[str, Any]

    @property
    def model(self) -> dict:
        return self.manifest.get("model", {})


def committed_versions(store: Store, partition: str) -> list[OutputVersion]:
    """Committed output versions of a partition, oldest first (a version counts only with its manifest)."""
    found = []
    for info in store.listdir(partition):
        match = _VERSION.match(info.base_name)
        if info.type != pafs.FileType.Directory or not match:
            continue
        manifest = store.read_json(partition, info.base_name, MANIFEST)
        if valid_manifest(manifest):
            found.append(OutputVersion(partition, int(match.group(1)), store.uri(partition, info.base_name), manifest))
    return sorted(found, key=lambda v: v.number)


def version_dir(partition: str, number: int) -> str:
    return join_path(partition, f"v{number}")


@dataclass
class Attempt:
    """One try at scoring a partition into output version ``number``."""
    store: Store
    partition: str
    number: int
    attempt_id: str

    @property
    def publication(self) -> Publication:
        store, target = self.store, self.store.path(version_dir(self.partition, self.number))
        staging = store.path(STAGING, partition_key(self.partition), self.attempt_id) if store.local else None
        return Publication(store.storage, target, staging, root=store.base)

    @property
    def write_uri(self) -> str:
        """Where the pipeline writes: a private staging dir (local), or the version dir itself (object store)."""
        if self.store.local:
            return self.store.uri(STAGING, partition_key(self.partition), self.attempt_id)
        return self.store.uri(version_dir(self.partition, self.number))

    @property
    def final_uri(self) -> str:
        return self.store.uri(version_dir(self.partition, self.number))

    def prepare(self) -> None:
        """Remove leftovers of earlier attempts on this partition (the caller holds the lease).

        A ``v<k>`` that exists with a manifest file (one that is not valid: ``number`` follows the
        highest committed version) is not an attempt's leftover; locally, neither is any ``v<k>``
        (the rename publishes directory and manifest together): ``CommitFailed`` before any scoring.
        """
        target = version_dir(self.partition, self.number)
        if self.store.local:
            self.store.delete_dir(STAGING, partition_key(self.partition))
            if self.store.exists(target):
                raise CommitFailed(self._blocked(self.store.path(target)))
        elif self.store.exists(target, MANIFEST):
            raise CommitFailed(self._blocked(self.store.uri(target)))
        else:
            self.store.delete_dir(target)

    def _blocked(self, final: str) -> str:
        return (f"{self.partition}: {final} exists without a valid {MANIFEST} manifest (deleted by hand, or not "
                "written by this job): remove that directory, or restore its manifest, then run again")

    def commit(self, manifest: dict) -> bool:
        """Publish the attempt; False when another attempt already committed this version.

        Raises ``CommitFailed`` (naming the paths and the errno) when publishing failed for any
        other reason; nothing is published then.
        """
        try:
            return self.publication.publish(manifest, existing="keep")
        except CommitFailed as exc:
            raise CommitFailed(f"{self.partition}: {exc}") from exc

    def abandon(self) -> None:
        self.publication.abandon()


def committed_outputs(root: str, kind: str = "scored") -> dict[str, list[str]]:
    """Reader contract in code: for each partition, the files of its current committed version.

    ``kind`` is ``scored`` or ``rejected``. Partitions are found through the ledger and the
    version directories themselves, so a partition committed by a run that died before its
    ledger write is still found.
    """
    store = Store(root)
    partitions = {entry["partition"] for entry in Ledger(store).entries()}
    partitions |= set(_partitions_with_versions(store))
    out = {}
    for partition in sorted(partitions):
        versions = committed_versions(store, partition)
        if versions:
            latest = versions[-1]
            out[partition] = [join_path(latest.uri, f["path"]) for f in latest.manifest["files"] if f["kind"] == kind]
    return out


def _partitions_with_versions(store: Store) -> list[str]:
    selector = pafs.FileSelector(store.base, recursive=True, allow_not_found=True)
    found = set()
    for info in store.fs.get_file_info(selector):
        rel = info.path[len(store.base):].strip("/")
        parts = rel.split("/")
        if info.type == pafs.FileType.File and parts[-1] == MANIFEST and len(parts) >= 3 \
                and _VERSION.match(parts[-2]) and not any(p.startswith("_") for p in parts[:-1]):
            found.add("/".join(parts[:-2]))
    return sorted(found)


# ---------------------------------------------------------------- ledger

class Ledger:
    """One JSON record per committed output version, under ``<root>/_ledger/``."""

    def __init__(self, store: Store):
        self.store = store

    def record(self, entry: dict) -> None:
        self.store.write_json(entry, LEDGER, partition_key(entry["partition"]), f"v{entry['output_version']}.json")

    def has(self, partition: str, number: int) -> bool:
        return self.store.exists(LEDGER, partition_key(partition), f"v{number}.json")

    def entries(self) -> list[dict]:
        """One record per committed version; a version recorded under an older key scheme as well (``a__b``
        before keys were percent-encoded, then repaired under the new key) counts once, the original first."""
        out: dict[tuple[str, int], dict] = {}
        for folder in self.store.listdir(LEDGER):
            if folder.type != pafs.FileType.Directory:
                continue
            for info in self.store.listdir(LEDGER, folder.base_name):
                if info.base_name.endswith(".json"):
                    entry = self.store.read_json(LEDGER, folder.base_name, info.base_name)
                    if entry is None:
                        continue
                    key = (entry["partition"], entry["output_version"])
                    if key not in out or (out[key].get("repaired") and not entry.get("repaired")):
                        out[key] = entry
        return [out[key] for key in sorted(out)]

    def repair(self, versions: list[OutputVersion]) -> int:
        """Write the records missing for committed versions (a run died after commit); count them."""
        repaired = 0
        for version in versions:
            if not self.has(version.partition, version.number):
                self.record(entry_from_manifest(version.partition, version.number, version.uri, version.manifest,
                                                repaired=True))
                repaired += 1
        return repaired


def entry_from_manifest(partition: str, number: int, uri: str, manifest: dict, **extra) -> dict:
    keys = ("rows_in", "rows_out", "rows_rejected", "rejected_by_reason", "inputs", "model", "scored_with",
            "started_at", "committed_at", "scheduled_run_id", "attempt_id", "seconds")
    return {"partition": partition, "output_version": number, "output": uri,
            **{k: manifest.get(k) for k in keys}, **extra}


# ---------------------------------------------------------------- leases

@dataclass(frozen=True, kw_only=True)
class LeaseSettings:
    """The lease an instance holds on a partition while it scores it, so that no two score it at once."""
    ttl_s: float = 900.0  # a lease not renewed for this long may be taken over
    heartbeat_s: float = 60.0  # how often the holder renews it

    def __post_init__(self) -> None:
        # A holder that renews less often than the ttl loses a live lease to another instance.
        if not 0 < self.heartbeat_s < self.ttl_s:
            raise ValueError(f"lease.heartbeat_s ({self.heartbeat_s}) must be > 0 and below "
                             f"lease.ttl_s ({self.ttl_s})")


class LeaseLost(RuntimeError):
    """Another instance took the partition over (this one stalled past its lease)."""


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    current = _process_start(pid)
    return start is None or current is None or current == start  # a reused pid has another start time


def holder_alive(holder: dict | None, now: float | None = None) -> bool:
    if holder is None:
        return True  # unreadable: only expiry (by file age, see Lease.acquire) frees it
    now = time.time() if now is None else now
    if holder.get("released") or now >= float(holder.get("expires_at", 0)):
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return _process_alive(holder["pid"], holder.get("pid_start"))
    return True


class Lease:
    """An exclusive, expiring claim on one partition, renewed by a heartbeat thread."""

    def __init__(self, store: Store, partition: str, generation: int, payload: dict, settings: LeaseSettings):
        self.store = store
        self.partition = partition
        self.generation = generation
        self.payload = payload
        self.settings = settings
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _dir(partition: str) -> tuple[str, str]:
        return LEASES, partition_key(partition)

    @staticmethod
    def _generations(store: Store, partition: str) -> list[tuple[int, pafs.FileInfo]]:
        found = []
        for info in store.listdir(*Lease._dir(partition)):
            name = info.base_name
            if name.endswith(".json") and name[:-5].isdigit():
                found.append((int(name[:-5]), info))
        return sorted(found, key=lambda item: item[0])

    @classmethod
    def holder(cls, store: Store, partition: str) -> dict | None:
        gens = cls._generations(store, partition)
        return store.read_json(*cls._dir(partition), f"{gens[-1][0]:010d}.json") if gens else None

    @classmethod
    def acquire(cls, store: Store, partition: str, settings: LeaseSettings, owner: dict) -> "Lease | None":
        """The lease, or None when a live holder has it or another instance won the race."""
        gens = cls._generations(store, partition)
        top = gens[-1][0] if gens else 0
        if gens:
            current = store.read_json(*cls._dir(partition), f"{top:010d}.json")
            age = time.time() - (gens[-1][1].mtime.timestamp() if gens[-1][1].mtime else 0)
            if holder_alive(current) and not (current is None and age > settings.ttl_s):
                return None
        now = time.time()
        payload = {**owner, "token": uuid.uuid4().hex, "partition": partition, "generation": top + 1,
                   "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                   "acquired_at": now_iso(now), "expires_at": now + settings.ttl_s, "released": False}
        if not store.create_exclusive(payload, *cls._dir(partition), f"{top + 1:010d}.json"):
            return None
        for number, _ in gens[:-1]:  # keep the last two generations for inspection
            try:
                store.delete_file(*cls._dir(partition), f"{number:010d}.json")
            except OSError:  # tidying only: an old generation never outranks the newest
                pass
        lease = cls(store, partition, top + 1, payload, settings)
        lease._start_heartbeat()
        return lease

    def _name(self) -> str:
        return f"{self.generation:010d}.json"

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this is still the newest generation and still ours."""
        if self.lost:
            raise LeaseLost(self.lost)
        gens = self._generations(self.store, self.partition)
        if gens and gens[-1][0] != self.generation:
            self.lost = f"{self.partition}: lease generation {gens[-1][0]} replaced ours ({self.generation})"
            raise LeaseLost(self.lost)
        current = self.store.read_json(*self._dir(self.partition), self._name())  # a failed read raises, and
        if current is None or current.get("token") != self.payload["token"]:  # loses nothing: only this is "lost"
            self.lost = f"{self.partition}: our lease file changed hands"
            raise LeaseLost(self.lost)

    def renew(self) -> None:
        self.check()
        self.payload = {**self.payload, "expires_at": time.time() + self.settings.ttl_s, "renewed_at": now_iso()}
        self.store.write_json(self.payload, *self._dir(self.partition), self._name())

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.settings.heartbeat_s):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except OSError:  # a transient store error: try again at the next beat
                    continue
        self._thread = threading.Thread(target=beat, name=f"lease-{partition_key(self.partition)}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.check()
        except LeaseLost:
            return  # not ours any more: leave the new holder's lease alone
        self.payload = {**self.payload, "released": True, "released_at": now_iso()}
        self.store.write_json(self.payload, *self._dir(self.partition), self._name())
