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


def filesystem_for(uri: str, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Filesystem and in-filesystem path for a local path or URI.

    ``s3_endpoint`` (or env ``AWS_ENDPOINT_URL``) points s3:// at an S3-compatible store.
    """
    if not _is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://"):
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            fs = pafs.S3FileSystem(endpoint_override=host or scheme, scheme=scheme if host else "https",
                                   region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
            return fs, uri[len("s3://"):]
    return pafs.FileSystem.from_uri(uri)


def resolve_parquet_files(path: str, s3_endpoint: str | None = None) -> ParquetFiles:
    """Expand a file, a directory (recursively) or a glob into a sorted list of Parquet files.

    Raises FileNotFoundError naming the path when nothing matches, so a typo fails before any compute.
    """
    fs, inner = filesystem_for(path, s3_endpoint)
    prefix = path.split("://", 1)[0] + "://" if _is_uri(path) else ""
    has_glob = any(ch in inner for ch in "*?[")
    if not has_glob:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            return ParquetFiles(fs, (inner,), prefix)
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(inner, recursive=True)
            found = [i.path for i in fs.get_file_info(selector)
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
        found = [i.path for i in fs.get_file_info(selector)
                 if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)]
    if not found:
        raise FileNotFoundError(f"{path}: the pattern matches no files")
    return ParquetFiles(fs, tuple(sorted(found)), prefix)


def _hidden(relative: str) -> bool:
    """Skip staging and quarantine folders (``_rejected/``, ``.tmp``) inside a dataset directory."""
    return any(part.startswith(("_", ".")) for part in relative.strip("/").split("/")[:-1]) or \
        os.path.basename(relative).startswith(("_", "."))
