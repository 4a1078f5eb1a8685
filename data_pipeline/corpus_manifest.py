"""The manifest ``prepare_corpus`` writes last into each folder it publishes, and the readers' check of it.

A corpus folder (``data/corpus``: splits, ``labels.json``, ``stats.json``; ``data/pinyin``: pair splits,
``stats.json``) is built in a staging folder beside it and published with one rename
(``jobs.common.staged_dir``), so a reader sees the old folder or the new one, never a mix. The manifest
``_CORPUS.json`` lists every file of the publish (bytes, sha256, rows of a Parquet file), the label
names, the publish id shared by the folders one run publishes and, for a classification corpus, the
pinyin folder published with it. Readers check the split files they are given against it (sizes:
cheap on every run; sha256 is there for an audit), so a file changed or copied in after the publish,
or splits taken from two publishes, are refused. A folder that looks like ``prepare_corpus``'s
(``labels.json`` or ``stats.json``) without a manifest was written in place by an earlier version, or
half-written: it is refused too. A user's own Parquet folder (neither file) is read as it is.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline.errors import InputDataError
from data_pipeline.paths import ParquetFiles

MANIFEST = "_CORPUS.json"
MARKERS = ("labels.json", "stats.json")  # what only a prepare_corpus folder holds beside its splits
FORMAT = 1


class CorpusManifestError(InputDataError):
    """A corpus folder without its manifest, or split files its manifest does not list as they are."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, kind: str, publish_id: str, label_names: list[str] | None = None,
                   **links: object) -> dict:
    """List every file of ``directory`` (flat, as prepare_corpus writes it) in its manifest, written last."""
    files = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST):
        entry = {"path": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
        if path.suffix == ".parquet":
            entry["rows"] = pq.read_metadata(path).num_rows
        files.append(entry)
    manifest = {"format": FORMAT, "kind": kind, "publish_id": publish_id,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "label_names": label_names,
                **links, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def _read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as handle:
        try:
            return json.loads(handle.read().decode("utf-8"))
        except ValueError as exc:
            raise CorpusManifestError(f"{path}: not a readable manifest ({exc}); run `python -m jobs.prepare_corpus` "
                                      "again") from None


class _Folders:
    """Each folder's manifest, read once (a split given as a directory has many files in one folder)."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs
        self.manifests: dict[str, dict | None] = {}

    def manifest(self, folder: str, shown: str) -> dict | None:
        if folder not in self.manifests:
            manifest = _read_json(self.fs, posixpath.join(folder, MANIFEST))
            if manifest is None:
                found = [m for m in MARKERS if self.fs.get_file_info(posixpath.join(folder, m)).type
                         == pafs.FileType.File]
                if found:
                    raise CorpusManifestError(
                        f"{shown}: looks like a prepare_corpus output (it holds {' and '.join(found)}) but has no "
                        f"{MANIFEST}: an earlier version wrote it in place, or a crash left it half-written; run "
                        "`python -m jobs.prepare_corpus` again to publish it whole")
            self.manifests[folder] = manifest
        return self.manifests[folder]


def _check(folders: _Folders, path: str, uri: str) -> str | None:
    """The publish id of ``path``'s folder after checking the file is listed as it is; None: not a corpus."""
    if not path.endswith(".parquet"):  # prepare_corpus writes splits as Parquet only: a CSV is a user's file
        return None
    folder = posixpath.dirname(path)
    shown_folder = uri[:len(uri) - len(posixpath.basename(path))].rstrip("/") or folder
    manifest = folders.manifest(folder, shown_folder)
    if manifest is None:
        return None
    listed = {entry["path"]: entry for entry in manifest.get("files", [])}
    name = posixpath.basename(path)
    entry = listed.get(name)
    if entry is None:
        raise CorpusManifestError(f"{uri}: not among the files {shown_folder}/{MANIFEST} lists "
                                  f"({', '.join(sorted(listed))}): it was put there after prepare_corpus published "
                                  "the folder; run `python -m jobs.prepare_corpus` again")
    size = folders.fs.get_file_info(path).size
    if size != entry["bytes"]:
        raise CorpusManifestError(f"{uri}: {size} bytes, but {shown_folder}/{MANIFEST} lists {entry['bytes']} "
                                  f"(publish {manifest.get('publish_id')}): the file changed after prepare_corpus "
                                  "published it; run `python -m jobs.prepare_corpus` again")
    return str(manifest.get("publish_id"))


def check_corpus_files(splits: dict[str, ParquetFiles], one_publish: bool = True) -> dict[str, set[str]]:
    """Check every file of every split against its folder's manifest; return the publish ids per split.

    ``one_publish``: the splits a model trains on come from one publish (deduplicated together);
    splits of two publishes are refused, naming both.
    """
    ids: dict[str, set[str]] = {}
    first: tuple[str, str, str] | None = None  # (split, uri, publish id)
    for split, files in splits.items():
        folders = _Folders(files.filesystem)
        ids[split] = set()
        for path, uri in zip(files.paths, files.uris()):
            publish = _check(folders, path, uri)
            if publish is None:
                continue
            ids[split].add(publish)
            if first is None:
                first = (split, uri, publish)
            elif one_publish and publish != first[2]:
                raise CorpusManifestError(
                    f"the splits come from two prepare_corpus publishes: {split} {uri} (publish {publish}), "
                    f"{first[0]} {first[1]} (publish {first[2]}); give the splits of one publish")
    return ids


def check_corpus_file(fs: pafs.FileSystem, path: str, uri: str) -> str | None:
    """One file (any format) against its folder's manifest; its publish id, or None outside a corpus folder."""
    return _check(_Folders(fs), path, uri)
