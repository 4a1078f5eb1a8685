"""Local-disk durability: fsync a file, a directory, a tree; put a directory in another's place atomically.

The primitives behind every publish on a local or POSIX-shared filesystem (``jobs.scoring.publish``,
``jobs.common.staged_dir``, the model cache in ``jobs.common.registry``).
"""

from __future__ import annotations

import errno
import os


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



def fsync_up(path: str, stop: str) -> None:
    """fsync ``path`` and each parent up to ``stop``: directories ``makedirs`` may just have created."""
    stop = os.path.abspath(stop)
    current = os.path.abspath(path)
    while True:
        fsync_dir(current)
        if current == stop or os.path.dirname(current) == current:
            return
        current = os.path.dirname(current)



def sync_tree(root: str) -> None:
    """fsync every file under a local directory, then every directory, deepest first."""
    directories = []
    for current, _, files in os.walk(root):
        directories.append(current)
        for name in files:
            fsync_file(os.path.join(current, name))
    for current in reversed(directories):
        fsync_dir(current)



_AT_FDCWD = -100

_RENAME_EXCHANGE = 2



def exchange_dirs(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the kernel, the C library or the filesystem cannot (the caller falls back);
    any other failure raises ``OSError``.
    """
    import ctypes
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

