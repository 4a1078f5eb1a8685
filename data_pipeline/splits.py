"""Given train/val/test files: texts that appear in more than one split, found and removed.

A review in both the training and the test split inflates test accuracy (the model has seen
it). Each split is deduplicated on its own first (``corpus.clean``); then a row whose (text,
pair) already appears in an earlier split (train before val before test) is reported and, by
default, removed from the later one, whatever its label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from data_pipeline.corpus import CleanRows

SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class CrossSplitOverlap:
    later: str
    earlier: str
    rows: int  # rows of ``later`` whose text is in ``earlier``

    def __str__(self) -> str:
        return f"{self.rows} row(s) of {self.later} also in {self.earlier}"


def _keys(rows: CleanRows) -> list[tuple[str, str | None]]:
    pairs = rows.text_pairs if rows.text_pairs is not None else [None] * len(rows.texts)
    return list(zip(rows.texts, pairs))


def _subset(rows: CleanRows, keep: list[int]) -> CleanRows:
    return replace(rows, ids=[rows.ids[i] for i in keep], texts=[rows.texts[i] for i in keep],
                   text_pairs=None if rows.text_pairs is None else [rows.text_pairs[i] for i in keep],
                   labels=[rows.labels[i] for i in keep])


def cross_split_overlaps(splits: dict[str, CleanRows], remove: bool = True
                         ) -> tuple[dict[str, CleanRows], list[CrossSplitOverlap]]:
    """The splits with later copies removed (``remove``), and how many rows each pair of splits shared."""
    seen: dict[tuple[str, str | None], str] = {}
    out: dict[str, CleanRows] = {}
    overlaps: list[CrossSplitOverlap] = []
    for name in [s for s in SPLIT_ORDER if s in splits]:
        rows = splits[name]
        keys = _keys(rows)
        found: dict[str, int] = {}
        keep = []
        for index, key in enumerate(keys):
            earlier = seen.get(key)
            if earlier is None:
                keep.append(index)
            else:
                found[earlier] = found.get(earlier, 0) + 1
        overlaps += [CrossSplitOverlap(name, earlier, n) for earlier, n in found.items()]
        for key in keys:
            seen.setdefault(key, name)
        out[name] = _subset(rows, keep) if remove and len(keep) < len(keys) else rows
    return out, overlaps
