"""The one retried path to storage: absent is absent, a transient error is retried, then raised.

An object store answers 503 SlowDown now and then, resets a connection, or stalls; an NFS mount
returns EIO or ESTALE for a moment. pyarrow's S3 client retries some of these itself (three
attempts), but not all: a 503 on a GetObject surfaces at once as ``AWS Error INTERNAL_FAILURE``.
Every storage call of the scoring and publishing code goes through ``Storage`` (or ``retrying``):

- "not found" is the only answer that means absent (``read_json`` returns None, ``exists`` False);
- an error that ``is_transient`` is retried with exponential backoff, ``StorageRetry.attempts``
  tries in all, then raised as ``StorageError`` naming the operation and the path;
- any other error (access denied, no such bucket, a corrupt file) is raised at once, unchanged.

A caller never reads a failed read as "absent": a lease, a manifest or a committed version is
never lost, or its number reused, because one request failed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")

# Markers in pyarrow's messages for S3 errors worth another try (the AWS SDK's error names), and the
# HTTP statuses behind them; 4xx answers (403, 404, 400) and NoSuchBucket are not among them.
TRANSIENT_MARKERS = ("AWS Error NETWORK_CONNECTION", "AWS Error SLOW_DOWN", "AWS Error INTERNAL_FAILURE",
                     "AWS Error SERVICE_UNAVAILABLE", "AWS Error THROTTLING", "AWS Error REQUEST_TIMEOUT",
                     "AWS Error REQUEST_TIME_TOO_SKEWED", "HTTP status 500", "HTTP status 502", "HTTP status 503",
                     "HTTP status 504", "curlCode: 28", "Connection reset", "Connection refused")
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.ECONNRESET,
                              errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                              errno.EINTR, errno.EBUSY})


@dataclass(frozen=True, kw_only=True)
class StorageRetry:
    """How hard a storage call is retried when the store answers with a transient error."""
    attempts: int = 6  # tries in all; 1: no retry
    first_backoff_s: float = 0.5  # wait after the first failure, doubled after each further one
    max_backoff_s: float = 8.0  # defaults: 0.5 + 1 + 2 + 4 + 8 = 15.5 s of waiting before giving up

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"storage.attempts must be >= 1, got {self.attempts}")
        if self.first_backoff_s < 0 or self.max_backoff_s < self.first_backoff_s:
            raise ValueError("storage.first_backoff_s must be >= 0 and <= storage.max_backoff_s")

    def backoffs(self) -> Iterator[float]:
        delay = self.first_backoff_s
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_backoff_s)


DEFAULT_RETRY = StorageRetry()


class StorageError(OSError):
    """A storage call that still failed after its retries; the message names the operation and the path."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, StorageError):  # already retried below us
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    if isinstance(exc, (OSError, pa.ArrowException)):
        text = str(exc)
        return any(marker in text for marker in TRANSIENT_MARKERS)
    return False


def is_storage_fault(exc: BaseException) -> bool:
    """The store's fault rather than the content's: a retried-out or transient error, a missing or forbidden path."""
    return isinstance(exc, (StorageError, FileNotFoundError, PermissionError)) or is_transient(exc)


def retrying(operation: Callable[[], T], what: str, retry: StorageRetry = DEFAULT_RETRY) -> T:
    """``operation()``, tried again after a transient error; the last one raised as ``StorageError``."""
    backoffs = retry.backoffs()
    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except (OSError, pa.ArrowException) as exc:
            if not is_transient(exc):
                raise
            delay = next(backoffs, None)
            if delay is None:
                raise StorageError(f"{what}: {exc} (gave up after {attempt} attempt(s))") from exc
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", what, _first_line(exc), delay, attempt,
                        retry.attempts)
            time.sleep(delay)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


class Storage:
    """A pyarrow filesystem whose calls all go through ``retrying``; paths are in-filesystem paths."""

    def __init__(self, fs: pafs.FileSystem, retry: StorageRetry = DEFAULT_RETRY):
        self.fs = fs
        self.retry = retry
        self.local = isinstance(fs, pafs.LocalFileSystem)

    def call(self, operation: Callable[[], T], what: str) -> T:
        return retrying(operation, what, self.retry)

    def info(self, path: str) -> pafs.FileInfo:
        return self.call(lambda: self.fs.get_file_info(path), f"stat {path}")

    def exists(self, path: str) -> bool:
        return self.info(path).type != pafs.FileType.NotFound

    def list(self, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """Entries under ``path`` ([] when it does not exist)."""
        selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
        return self.call(lambda: self.fs.get_file_info(selector), f"list {path}")

    def files(self, path: str) -> dict[str, int]:
        """Every file under ``path`` (recursively), by its path relative to ``path``, with its size."""
        base = path.rstrip("/")
        return {info.path[len(base):].lstrip("/"): int(info.size or 0)
                for info in self.list(path, recursive=True) if info.type == pafs.FileType.File}

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes; None only when it does not exist."""
        def read() -> bytes:
            with self.fs.open_input_stream(path) as handle:
                return handle.read()
        try:
            return self.call(read, f"read {path}")
        except FileNotFoundError:
            return None

    def read_json(self, path: str) -> dict | None:
        """A JSON object this project wrote; None when absent, or when the file holds no JSON object
        (a foreign file): never for a failed read, which raises."""
        data = self.read_bytes(path)
        if data is None:
            return None
        try:
            payload = json.loads(data.decode())
        except (UnicodeDecodeError, ValueError):
            return None
        return payload if isinstance(payload, dict) else None

    def write_bytes(self, path: str, data: bytes) -> None:
        """Readers see all of the file or none: temp + fsync + rename locally, one PUT on an object store."""
        if self.local:
            def put_local() -> None:
                tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
                try:
                    with open(tmp, "wb") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            self.call(put_local, f"write {path}")
            return

        def put() -> None:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
        self.call(put, f"write {path}")

    def write_json(self, path: str, payload: dict) -> None:
        self.write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False).encode())

    def create_dir(self, path: str) -> None:
        self.call(lambda: self.fs.create_dir(path, recursive=True), f"create {path}")

    def delete_file(self, path: str) -> bool:
        """Delete a file; False when it was not there."""
        try:
            self.call(lambda: self.fs.delete_file(path), f"delete {path}")
            return True
        except FileNotFoundError:
            return False

    def delete_dir(self, path: str) -> None:
        """Delete a directory and everything under it; nothing to do when it is not there."""
        if self.exists(path):
            try:
                self.call(lambda: self.fs.delete_dir(path), f"delete {path}")
            except FileNotFoundError:
                pass
