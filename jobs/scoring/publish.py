"""Durability primitives for publishing a directory of output files.

A published directory must survive a host crash as the manifest says it is: every file the
manifest lists is on disk in full before the rename (or the manifest PUT) that makes it
visible, and nothing the manifest does not list is published beside it. On local and POSIX
filesystems that needs ``fsync`` of each file and of the directories whose entries changed;
object stores make each PUT durable on its own, so these are no-ops there.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from data_pipeline.paths import join_path


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creations, renames) durable; some filesystems refuse: ignore them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(root: str) -> None:
    """fsync every file under a local directory, then every directory, deepest first."""
    directories = []
    for current, _, files in os.walk(root):
        directories.append(current)
        for name in files:
            fsync_file(os.path.join(current, name))
    for current in reversed(directories):
        fsync_dir(current)


def remove_unlisted(fs: pafs.FileSystem, base: str, keep: set[str]) -> list[str]:
    """Delete the files under ``base`` whose path relative to it is not in ``keep``; return them.

    A write task that was retried (its worker killed mid-write) leaves a file its successor does
    not list; it must not be published beside the listed ones.
    """
    removed = []
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(base.rstrip("/")):].lstrip("/")
        if relative not in keep:
            fs.delete_file(join_path(base, relative))
            removed.append(relative)
    return sorted(removed)


def listed_files(manifest: dict) -> set[str]:
    """The data files a manifest lists, relative to its directory."""
    return {entry["path"] for entry in manifest.get("files", [])}
