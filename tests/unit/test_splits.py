"""Given splits: a text in an earlier split is reported in the later one and removed from it."""

from __future__ import annotations

from data_pipeline.corpus import CleanRows
from data_pipeline.splits import CrossSplitOverlap, cross_split_overlaps


def _rows(texts, labels, pairs=None):
    return CleanRows(ids=[f"id-{t}" for t in texts], texts=list(texts), text_pairs=pairs, labels=list(labels))


def test_a_text_in_train_is_removed_from_val_and_test_whatever_its_label():
    splits = {"train": _rows(["a", "b", "c"], [0, 1, 0]), "val": _rows(["b", "d"], [0, 1]),
              "test": _rows(["a", "d", "e"], [0, 1, 1])}
    cleaned, overlaps = cross_split_overlaps(splits)
    assert cleaned["train"] == splits["train"]
    assert cleaned["val"].texts == ["d"] and cleaned["val"].labels == [1] and cleaned["val"].ids == ["id-d"]
    assert cleaned["test"].texts == ["e"]
    assert sorted(overlaps, key=str) == sorted([CrossSplitOverlap("val", "train", 1),
                                                CrossSplitOverlap("test", "train", 1),
                                                CrossSplitOverlap("test", "val", 1)], key=str)
    assert str(CrossSplitOverlap("test", "train", 1)) == "1 row(s) of test also in train"


def test_keep_reports_without_removing_and_pairs_are_compared_whole():
    splits = {"train": _rows(["q1", "q1"], [0, 1], pairs=["a1", "a2"]),
              "test": _rows(["q1", "q1"], [0, 1], pairs=["a2", "a3"])}
    kept, overlaps = cross_split_overlaps(splits, remove=False)
    assert kept == splits and overlaps == [CrossSplitOverlap("test", "train", 1)]
    cleaned, _ = cross_split_overlaps(splits)
    assert cleaned["test"].text_pairs == ["a3"] and cleaned["test"].labels == [1]
