"""Tests for data_pipeline/pinyin.py: segmenting, alignment, pairs, the per-character baseline, metrics."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from data_pipeline.pinyin import (Pair, PairStats, ReadingTable, Scores, baseline_scores, build_pairs,
                                  char_by_char_pinyin, is_syllable, normalise_source, score, segment_text, split_of,
                                  transliterate, write_pairs)
from data_pipeline.pinyin_sources import SourceTexts
from data_pipeline.schema import SEQ2SEQ_SPEC

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


# ---- segmenting ------------------------------------------------------------------------------

def test_segments_split_at_sentence_punctuation_and_whitespace():
    text = "房间很大。服务一般！早餐？还行;价格便宜 位置好…下次还来"
    assert segment_text(text, 48) == ["房间很大", "服务一般", "早餐", "还行", "价格便宜", "位置好", "下次还来"]


def test_segments_keep_decimals_and_commas_but_strip_edges():
    assert segment_text("屏幕3.5寸，不错.", 48) == ["屏幕3.5寸,不错"]  # NFKC: full-width comma -> ","
    assert segment_text("（好）", 48) == ["好"]
    assert segment_text("ＯＫ！ｉＰｈｏｎｅ好用", 48) == ["iPhone好用"]  # full-width letters normalised


def test_segments_without_chinese_are_dropped():
    assert segment_text("OK!!! 123 ... :)", 48) == []


def test_long_sentences_are_cut_into_windows_at_clauses_then_hard():
    text = "一二三四五，六七八九十，甲乙丙丁戊己庚辛壬癸子丑寅卯"
    windows = segment_text(text, 8)
    assert all(1 <= len(w) <= 8 for w in windows)
    assert windows[:2] == ["一二三四五", "六七八九十"]  # trailing commas are stripped at window edges
    assert "".join(windows) == "一二三四五六七八九十甲乙丙丁戊己庚辛壬癸子丑寅卯"
    assert [len(w) for w in windows[2:]] == [7, 7]  # 14 characters -> two balanced cuts, not 8 + 6


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError, match="max_chars"):
        segment_text("好", 0)


# ---- alignment -------------------------------------------------------------------------------

def test_transliteration_has_one_token_per_character():
    source = "银行行长还没来,买了2个iPhone"
    tokens = transliterate(source)
    assert len(tokens) == len(source)
    assert tokens[:6] == ["yin2", "hang2", "hang2", "zhang3", "hai2", "mei2"]  # phrase-aware: 行长 -> hang2 zhang3
    assert tokens[7] == ","  # punctuation maps to itself
    assert tokens[10:] == ["2", "ge4", "i", "P", "h", "o", "n", "e"]  # ASCII letters/digits: one token each


def test_neutral_tone_is_five_and_u_umlaut_is_v():
    assert transliterate("我们绿的") == ["wo3", "men5", "lv4", "de5"]
    assert all(is_syllable(t) for t in transliterate("我们绿的"))
    assert not is_syllable("2") and not is_syllable(",") and not is_syllable("iPhone")


def test_normalise_source_matches_segment_output():
    for segment in segment_text("ＡＢ，中 文\u200b测试。第二句", 48):
        assert normalise_source(segment) == segment
    assert normalise_source(" 中\u3000文\n") == "中文"


# ---- pairs -----------------------------------------------------------------------------------

def test_pairs_are_deduplicated_across_sources_and_split_by_sentence_hash(tmp_path):
    reviews = SourceTexts("reviews", ["r1", "r2", "r3"], ["很好。很好。物流快", "很好！质量差", "物流快。包装好"])
    news = SourceTexts("news", ["1", "2"], ["质量差，还行。新年讲话", "包装好。经济发展"])
    stats = PairStats()
    pairs = build_pairs([reviews, news], FRACTIONS, 48, stats)
    rows = [p for split in pairs.values() for p in split]
    # each sentence once, kept by the first source that has it, under that source's text id
    assert sorted((p.id, p.source, p.corpus) for p in rows) == [
        ("news-1-0", "质量差,还行", "news"), ("news-1-1", "新年讲话", "news"), ("news-2-1", "经济发展", "news"),
        ("reviews-r1-0", "很好", "reviews"), ("reviews-r1-2", "物流快", "reviews"),
        ("reviews-r2-1", "质量差", "reviews"), ("reviews-r3-1", "包装好", "reviews")]
    assert stats.sources["reviews"].duplicates_dropped == 3  # 很好 x2, 物流快
    assert stats.sources["news"].cross_source_dropped == {"reviews": 1}  # 包装好
    assert stats.sources["news"].duplicates_dropped == 0
    for split, split_rows in pairs.items():  # the split is the sentence's hash's, whichever text it came from
        assert all(split_of(hashlib.sha1(p.source.encode()).digest(), FRACTIONS) == split for p in split_rows)
    assert {s: sum(src.rows_per_split[s] for src in stats.sources.values()) for s in FRACTIONS} == \
        stats.rows_per_split == {s: len(v) for s, v in pairs.items()}
    assert next(p for p in rows if p.source == "很好").target == "hen3 hao3"

    write_pairs(tmp_path / "train.parquet", rows)
    table = pq.read_table(tmp_path / "train.parquet")
    assert table.schema.names == SEQ2SEQ_SPEC.names + ["corpus"]
    assert table.column("corpus").to_pylist() == [p.corpus for p in rows]


def test_sentence_hash_split_is_deterministic_disjoint_and_near_the_fractions():
    sentences = [f"第{i}句话" for i in range(3000)]
    first = build_pairs([SourceTexts("a", [str(i) for i in range(3000)], sentences)], FRACTIONS, 48)
    again = build_pairs([SourceTexts("b", ["x"] * 3000, sentences[::-1])], FRACTIONS, 48)  # other order and name
    members = {split: {p.source for p in rows} for split, rows in first.items()}
    assert members == {split: {p.source for p in rows} for split, rows in again.items()}
    assert [p.source for p in first["val"]] == [p.source for p in again["val"]]  # rows in hash order
    assert sum(len(m) for m in members.values()) == len(set().union(*members.values())) == 3000
    for split, fraction in FRACTIONS.items():
        assert abs(len(members[split]) / 3000 - fraction) < 0.03


def test_source_names_must_be_unique():
    with pytest.raises(ValueError, match="named 'a'"):
        build_pairs([SourceTexts("a", ["1"], ["好"]), SourceTexts("a", ["1"], ["行"])], FRACTIONS, 48)


# ---- baseline --------------------------------------------------------------------------------

TRAIN = [("银行", "yin2 hang2"), ("不行", "bu4 xing2"), ("行人", "xing2 ren2"), ("长度", "chang2 du4"),
         ("行走", "xing2 zou3"), ("a长", "a zhang3")]


def test_reading_table_counts_most_frequent_reading_and_polyphonic_chars():
    table = ReadingTable.fit(TRAIN)
    assert table.counts["行"] == {"xing2": 3, "hang2": 1}
    assert table.most_frequent("行") == "xing2"
    assert table.most_frequent("长") == "chang2"  # tie 1:1 -> alphabetical, deterministic
    assert table.polyphonic() == frozenset({"行", "长"})
    assert table.predict("行长a好") == ["xing2", "chang2", "a", "<unk>"]  # unseen Chinese -> <unk>


def test_unaligned_pairs_are_skipped_by_the_table():
    table = ReadingTable.fit([("行", "xing2 extra"), ("行", "hang2")])
    assert table.unaligned == 1 and table.counts["行"] == {"hang2": 1}


def test_char_by_char_pypinyin_reads_each_character_alone_without_phrases():
    assert transliterate("银行行长") == ["yin2", "hang2", "hang2", "zhang3"]  # the reference, phrase-aware
    assert char_by_char_pinyin("银行行长") == ["yin2", "xing2", "xing2", "zhang3"]  # each character alone: 行 xing2
    assert char_by_char_pinyin("我们绿的, 2个") == ["wo3", "men5", "lv4", "de5", ",", "2", "ge4"]  # same style
    assert char_by_char_pinyin("ＯＫ好") == ["O", "K", "hao3"]  # normalised like the model's source


def test_baseline_scores_on_a_toy_test_set():
    test = [("银行长", "yin2 hang2 zhang3"), ("行人", "xing2 ren2")]
    scores, table = baseline_scores(TRAIN, test)
    # predictions: yin2 xing2 chang2 | xing2 ren2 -> 3 of 5 syllables right; 行,长 x3 polyphonic positions, 1 right
    assert (scores.syllables, scores.syllables_correct) == (5, 3)
    assert (scores.polyphonic, scores.polyphonic_correct) == (3, 1)
    assert (scores.rows, scores.exact) == (2, 1)
    assert scores.rates()["polyphonic_accuracy"] == pytest.approx(1 / 3)


# ---- metrics ---------------------------------------------------------------------------------

def test_scores_are_position_wise_over_the_reference():
    ref = ["hen3", "hao3", ",", "xing2"]
    s = score(["很好,行"], [ref], [["hen3", "hao3", ","]], {"行"})  # one token short
    assert (s.tokens, s.tokens_correct, s.syllables, s.syllables_correct) == (4, 3, 3, 2)
    assert (s.polyphonic, s.polyphonic_correct, s.exact) == (1, 0, 0)
    longer = score(["很好,行"], [ref], [ref + ["le5"]], {"行"})  # extra tokens only cost exact match
    assert longer.syllables_correct == 3 and longer.exact == 0
    shifted = score(["很好,行"], [ref], [["hao3", ",", "xing2"]], set())  # a deletion shifts every later token
    assert shifted.tokens_correct == 0


def test_unaligned_rows_get_no_polyphonic_positions_and_scores_add_up():
    a = score(["行行"], [["xing2"]], [["xing2"]], {"行"})
    assert a.unaligned_rows == 1 and a.polyphonic == 0 and a.syllables_correct == 1
    b = score(["行"], [["xing2"]], [["hang2"]], {"行"})
    total = Scores().add(a).add(b)
    assert total.rows == 2 and total.syllables == 2 and total.polyphonic == 1
    assert Scores.from_counts({k: float(v) for k, v in total.as_counts().items()}) == total
    with pytest.raises(ValueError):
        score(["行"], [], [], set())


def test_pair_ids_and_rates_of_empty_scores():
    assert Pair("a-0", "好", "hao3").id == "a-0"
    rates = Scores().rates()
    assert all(v != v for v in rates.values())  # NaN when nothing was counted
