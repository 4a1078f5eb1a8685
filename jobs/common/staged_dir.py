"""A local directory's next version, built beside it and published with one rename.

``prepare_corpus`` writes each output folder whole into ``.<name>.staging-<publish id>`` next to it
(the same filesystem, so the rename is atomic), fsyncs it, then swaps it in with
``jobs.common.durable.replace_dir``: a reader of ``<name>/`` sees the old folder or the new one, never
a mix. A crash before the swap leaves the old folder as it was and a hidden staging folder, removed by
a later run once a day old (a live run of another process may still be writing a younger one). The
old folder is deleted after the swap; where the kernel cannot exchange two directories the old one is
renamed aside first, and a crash between the two renames leaves no folder at ``<name>/`` (a reader
finds none, never a half one) and the old one at ``.<name>.old-<publish id>``.

Only a folder whose files the job writes itself is replaced: one holding anything else (a user's
source files, a subfolder) is refused before any work, so publishing never deletes what it did not write.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from jobs.common.config import ConfigError
from jobs.common.durable import fsync_dir, replace_dir, sync_tree

_STALE_S = 24 * 3600


class StagedDir:
    """``with StagedDir(target, ours, publish_id) as staged``: write into ``staged.path``, then ``publish()``.

    Leaving the block without publishing (an error, an interrupt) removes the staging folder.
    """

    def __init__(self, target: str | Path, ours: frozenset[str], publish_id: str):
        self.target = Path(target).resolve()  # a symlinked output folder: stage beside what it points at
        self.publish_id = publish_id
        self.path = self.target.parent / f".{self.target.name}.staging-{publish_id}"
        self._aside = self.target.parent / f".{self.target.name}.old-{publish_id}"
        self._check_replaceable(ours)

    def _check_replaceable(self, ours: frozenset[str]) -> None:
        if not self.target.exists():
            return
        if not self.target.is_dir():
            raise ConfigError(f"{self.target} is a file, not a folder")
        foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in self.target.iterdir()
                         if p.name not in ours or not p.is_file())
        if foreign:
            raise ConfigError(f"{self.target} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                              "which this job does not write: publishing replaces the whole folder; choose a new "
                              "or empty output folder (or move those files)")

    def __enter__(self) -> StagedDir:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        self.path.mkdir()
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # gone already once published

    def publish(self) -> None:
        """fsync the staged folder, then make it the target in one rename; the old one is deleted after."""
        sync_tree(str(self.path))
        if self.target.exists():
            old = replace_dir(str(self.path), str(self.target), str(self._aside))
            fsync_dir(str(self.target.parent))
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.target)
        fsync_dir(str(self.target.parent))

    def _remove_stale(self) -> None:
        now = time.time()
        for pattern in (f".{self.target.name}.staging-*", f".{self.target.name}.old-*"):
            for entry in self.target.parent.glob(pattern):
                try:
                    if now - entry.stat().st_mtime > _STALE_S:
                        shutil.rmtree(entry, ignore_errors=True)
                except OSError:
                    pass  # removed by another run meanwhile
