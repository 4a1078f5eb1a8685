"""Resolve a Parquet path, directory or glob on any pyarrow filesystem (local, s3://, gs://...)."""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class ParquetFiles:
    filesystem: pafs.FileSystem
    paths: tuple[str, ...]  # filesystem-relative paths, sorted
    uri_prefix: str  # "" for local paths, "s3://" etc. for object stores

    def uris(self) -> list[str]:
        return [self.uri_prefix + p for p in self.paths]


def _is_uri(path: str) -> bool:
    return "://" in path


# The one place that says where s3:// lives. The same variables configure boto3 (MLflow's S3
# artifact store) and the AWS CLI, so one setting points every component at the same store.
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint from the environment (``http://host:port``), or None for AWS itself."""
    return next((os.environ[k] for k in S3_ENDPOINT_ENV if os.environ.get(k)), None)


def _s3_region() -> str | None:
    return next((os.environ[k] for k in S3_REGION_ENV if os.environ.get(k)), None)


def s3_filesystem(endpoint: str, request_attempts: int | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem on ``endpoint``; credentials stay with the default AWS chain (env, profile, role).

    The endpoint is part of the object, so a filesystem resolved on the driver and pickled into
    Ray tasks reaches the same store whatever the workers' environment; credentials are not.
    ``request_attempts``: tries of each request by the AWS SDK itself (pyarrow's default: 3).
    """
    scheme, _, host = endpoint.partition("://")
    retry = {} if request_attempts is None else {"retry_strategy": pafs.AwsStandardS3RetryStrategy(request_attempts)}
    return pafs.S3FileSystem(endpoint_override=(host or scheme).rstrip("/"), scheme=scheme if host else "https",
                             region=_s3_region() or "us-east-1", **retry)


def filesystem_for(uri: str, s3_endpoint_url: str | None = None,
                   request_attempts: int | None = None) -> tuple[pafs.FileSystem, str]:
    """Filesystem and in-filesystem path for a local path or URI.

    ``s3_endpoint_url`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) points s3:// at an
    S3-compatible store (MinIO, Ceph, moto...); without one, s3:// is AWS. ``request_attempts``
    (s3:// only): tries of each request by the AWS SDK, for callers whose writes nothing else retries.
    """
    if not _is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://"):
        endpoint = s3_endpoint_url or s3_endpoint()
        if endpoint:
            return s3_filesystem(endpoint, request_attempts), uri[len("s3://"):]
        if request_attempts is not None:  # AWS itself: the bucket's region, as from_uri finds it
            bucket = uri[len("s3://"):].split("/", 1)[0]
            region = _s3_region() or pafs.resolve_s3_region(bucket)
            return (pafs.S3FileSystem(region=region, retry_strategy=pafs.AwsStandardS3RetryStrategy(request_attempts)),
                    uri[len("s3://"):])
    return pafs.FileSystem.from_uri(uri)


def to_uri(path: str, like: str) -> str:
    """``path`` on the filesystem of URI ``like``, written as a URI again (``bucket/k`` -> ``s3://bucket/k``)."""
    return like.split("://", 1)[0] + "://" + path.lstrip("/") if _is_uri(like) else path


def resolve_parquet_files(path: str, s3_endpoint_url: str | None = None) -> ParquetFiles:
    """Expand a file, a directory (recursively) or a glob into a sorted list of Parquet files.

    Raises FileNotFoundError naming the path when nothing matches, so a typo fails before any compute.
    Listings are retried when the store answers with a transient error (``data_pipeline.storage``).
    """
    from data_pipeline.storage import retrying

    fs, inner = filesystem_for(path, s3_endpoint_url)
    prefix = path.split("://", 1)[0] + "://" if _is_uri(path) else ""
    has_glob = any(ch in inner for ch in "*?[")
    if not has_glob:
        info = retrying(lambda: fs.get_file_info(inner), f"stat {path}")
        if info.type == pafs.FileType.File:
            return ParquetFiles(fs, (inner,), prefix)
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(inner, recursive=True)
            found = [i.path for i in retrying(lambda: fs.get_file_info(selector), f"list {path}")
                     if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                     and not _hidden(i.path[len(inner):])]
            if not found:
                raise FileNotFoundError(f"{path}: directory holds no .parquet files")
            return ParquetFiles(fs, tuple(sorted(found)), prefix)
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not prefix:
        found = [p for p in glob.glob(inner, recursive=True) if os.path.isfile(p)]
    else:
        base = inner.split("*", 1)[0].rsplit("/", 1)[0]
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        found = [i.path for i in retrying(lambda: fs.get_file_info(selector), f"list {path}")
                 if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)]
    if not found:
        raise FileNotFoundError(f"{path}: the pattern matches no files")
    return ParquetFiles(fs, tuple(sorted(found)), prefix)


def _hidden(relative: str) -> bool:
    """Skip staging and quarantine folders (``_rejected/``, ``.tmp``) inside a dataset directory."""
    return any(part.startswith(("_", ".")) for part in relative.strip("/").split("/")[:-1]) or \
        os.path.basename(relative).startswith(("_", "."))


def join_path(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI alike (no OS separators: object stores use ``/``)."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


def mtime_ns(info: pafs.FileInfo) -> int:
    """A file's modification time in nanoseconds (0 where the filesystem reports none)."""
    if info.mtime_ns is not None:
        return int(info.mtime_ns)
    return int(info.mtime.timestamp() * 1e9) if info.mtime is not None else 0
