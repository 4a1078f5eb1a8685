"""Tests for data_pipeline/pinyin_sources.py and the seq2seq sources of prepare_corpus: tiny files, no Ray."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.pinyin_sources import (SourceError, parse_tagged_line, peoples_daily_path, read_parquet_texts,
                                          read_peoples_daily)
from jobs.common import config as config_lib
from jobs.common.config import ConfigError
from jobs.corpus.prepare import (CorpusInput, PrepareCorpusConfig, Seq2SeqCorpusSettings, Seq2SeqSource,
                                  write_seq2seq_corpus)

ROOT = Path(__file__).resolve().parents[2]


# ---- People's Daily --------------------------------------------------------------------------

def test_tagged_line_loses_tags_and_joins_words():
    line = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  （/w  附/v  图片/n  １/m  张/q  ）/w\n"
    assert parse_tagged_line(line) == "迈向充满希望的新世纪——（附图片１张）"  # NFKC comes later, in segment_text


def test_tagged_line_opens_compounds_and_drops_the_pku_line_id():
    line = "19980101-01-001-002/m  通过/p  [中央/n  人民/n  广播/vn  电台/n]nt  、/w  [/w  １/２/m  ]/w  北京"
    assert parse_tagged_line(line) == "通过中央人民广播电台、[１/２]北京"  # a lone [ or ] is text; untagged kept
    assert parse_tagged_line("") == "" and parse_tagged_line("  \n") == ""


def test_peoples_daily_reader_skips_empty_lines_and_numbers_the_rest(tmp_path):
    path = tmp_path / "tagged.txt"
    path.write_text("新年/t  讲话/n\n\n  \n[中共/j  中央/n]nt  发表/v\n第三/m  段/q\n", encoding="utf-8")
    texts = read_peoples_daily("news", path)
    assert (texts.name, texts.ids, texts.texts) == ("news", ["1", "4", "5"], ["新年讲话", "中共中央发表", "第三段"])
    assert read_peoples_daily("n", path, limit=2).texts == ["新年讲话", "中共中央发表"]


def test_the_shipped_peoples_daily_is_read_in_full():
    texts = read_peoples_daily()
    assert len(texts.texts) == 19_484
    assert texts.texts[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert not any("/" in t and t.count("/") > 3 for t in texts.texts[:2000])  # no tag left behind


def test_the_character_tagged_copy_is_the_same_text():
    """Why seg/data.txt is not a source: it is 199801.txt again, tagged per character (b/m/e/s)."""
    seg = peoples_daily_path().parent.parent / "seg" / "data.txt"
    with open(seg, encoding="utf-8") as handle:
        head = [parse_tagged_line(next(handle)) for _ in range(200)]
    assert head == read_peoples_daily(limit=200).texts


# ---- a user's Parquet column -----------------------------------------------------------------

def _parquet(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_column_skips_null_and_blank_rows(tmp_path):
    path = _parquet(tmp_path / "mine.parquet", body=["今天天气好", None, "  ", "明天下雨"], n=[1, 2, 3, 4])
    texts = read_parquet_texts(path, "body", "mine")
    assert (texts.name, texts.ids, texts.texts) == ("mine", ["0", "3"], ["今天天气好", "明天下雨"])


@pytest.mark.parametrize("column, values, needle", [
    ("missing", None, "has no column 'missing' (columns: body, n)"),
    ("n", None, "column 'n' is int64, not text (string)"),
    ("body", [None, " ", None], "column 'body': all 3 rows are null or blank"),
])
def test_parquet_source_errors_name_file_column_and_count(tmp_path, column, values, needle):
    path = _parquet(tmp_path / "bad.parquet", body=pa.array(values or ["好", "行", "长"], pa.string()), n=[1, 2, 3])
    with pytest.raises(SourceError) as info:
        read_parquet_texts(path, column, "mine")
    assert f"seq2seq source 'mine': {path}" in str(info.value) and needle in str(info.value)


def test_parquet_source_missing_file(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_parquet_texts(tmp_path / "nope.parquet", "text", "mine")


# ---- configuration and the written corpus ----------------------------------------------------

def test_shipped_config_reads_reviews_then_news():
    config = config_lib.load(PrepareCorpusConfig, ROOT / "configs/prepare_corpus.yaml")
    assert [(s.kind, s.corpus) for s in config.seq2seq.sources] == [("reviews", "reviews"), ("peoples_daily", "news")]
    assert PrepareCorpusConfig().seq2seq.sources == (Seq2SeqSource(kind="reviews"),)  # tests stay small


@pytest.mark.parametrize("override, needle", [
    ("seq2seq.sources=[{kind: parquet, path: x.parquet}]", "needs path, column and name"),
    ("seq2seq.sources=[{kind: reviews}, {kind: peoples_daily, name: reviews}]", "reviews used twice"),
    ("seq2seq.sources=[{kind: news}]", "is not one of"),
    ("seq2seq.sources=[{kind: reviews, colum: text}]", "unknown key"),
    ("seq2seq.split={train: 0.5, val: 0.1, test: 0.1}", "sum to 1"),
])
def test_bad_seq2seq_sources_are_config_errors(override, needle):
    with pytest.raises(ConfigError, match=needle):
        config_lib.load(PrepareCorpusConfig, ROOT / "configs/prepare_corpus.yaml", [override])


def test_corpus_from_reviews_news_and_a_parquet_column(tmp_path):
    from data_pipeline.corpus import CleanRows
    from data_pipeline.paths import resolve_parquet_files
    from data_pipeline.validation import validate_files
    from jobs.train.seq2seq import Seq2SeqData, pairs_spec, read_pairs

    news = tmp_path / "news.txt"
    news.write_text("物流/n  快/a  。/w  经济/n  发展/v\n\n今天/t  下雨/v\n", encoding="utf-8")
    mine = _parquet(tmp_path / "mine.parquet", text=["今天下雨。明天晴", "经济发展"])
    reviews = {"train": CleanRows(ids=["r1"], texts=["物流快！质量好"], text_pairs=None, labels=[1]),
               "val": CleanRows(ids=["r2"], texts=["包装好"], text_pairs=None, labels=[1]),
               "test": CleanRows(ids=[], texts=[], text_pairs=None, labels=[])}
    settings = Seq2SeqCorpusSettings(output_dir=str(tmp_path / "pinyin"), sources=(
        Seq2SeqSource(kind="reviews"), Seq2SeqSource(kind="peoples_daily", path=str(news)),
        Seq2SeqSource(kind="parquet", path=str(mine), column="text", name="mine")))
    stats = write_seq2seq_corpus(settings, reviews, tmp_path / "unused")
    assert {name: s.cross_source_dropped for name, s in stats.sources.items()} == {
        "reviews": {}, "news": {"reviews": 1}, "mine": {"news": 2}}
    tables = {split: pq.read_table(tmp_path / "pinyin" / f"{split}.parquet") for split in ("train", "val", "test")}
    corpus = sorted((c, s) for t in tables.values() for c, s in zip(t.column("corpus").to_pylist(),
                                                                        t.column("source").to_pylist()))
    assert corpus == [("mine", "明天晴"), ("news", "今天下雨"), ("news", "经济发展"),
                      ("reviews", "包装好"), ("reviews", "物流快"), ("reviews", "质量好")]
    saved = (tmp_path / "pinyin" / "stats.json").read_text()
    assert '"cross_source_dropped": {\n        "news": 2' in saved
    # the training job validates and reads these files as before: the corpus column is simply not selected
    data = Seq2SeqData()
    for split, table in tables.items():
        files = resolve_parquet_files(str(tmp_path / "pinyin" / f"{split}.parquet"))
        assert validate_files(files, pairs_spec(data)).rows == table.num_rows
        assert len(read_pairs(files, data)) == table.num_rows


def test_user_files_get_pairs_from_named_sources_only_when_enabled(tmp_path):
    from jobs.corpus.prepare import run

    path = _parquet(tmp_path / "labelled.parquet", text=[f"第{i}条评论很好" for i in range(20)],
                    label=["好"] * 10 + ["差"] * 10)
    config = PrepareCorpusConfig(input=CorpusInput(kind="file", path=str(path)), output_dir=str(tmp_path / "c"),
                                 log_to_mlflow=False)
    run(config)
    assert not (tmp_path / "pinyin").exists()
    from dataclasses import replace
    run(replace(config, seq2seq=Seq2SeqCorpusSettings(enabled=True)))
    names = {c for s in ("train", "val", "test")
             for c in pq.read_table(tmp_path / "pinyin" / f"{s}.parquet").column("corpus").to_pylist()}
    assert names == {"reviews"}  # the corpus source is the user's texts
