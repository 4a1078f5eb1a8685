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


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_dirs(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the kernel, the C library or the filesystem cannot (the caller falls back);
    any other failure raises ``OSError``.
    """
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def replace_dir(new: str, target: str, aside: str) -> str:
    """Put directory ``new`` at the existing ``target``; return where the old target now is (to delete).

    Readers of ``target`` see the old directory or the new one, never a mix and never none,
    where ``exchange_dirs`` works. Elsewhere the old one is renamed to ``aside`` first: between
    the two renames ``target`` does not exist (a reader finds no output, never a half one).
    """
    if exchange_dirs(new, target):
        return new
    os.rename(target, aside)
    os.rename(new, target)
    return aside
