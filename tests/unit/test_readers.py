"""Tests for data_pipeline/readers.py: users' CSV / JSONL / Parquet files, read as they come or refused clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.readers import FileFormat, InputFormatError, LabelRules, TextFields, read_labelled, read_table

AUTO = FileFormat()
TEXT = TextFields()


def write(tmp_path: Path, name: str, content: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode(encoding))
    return str(path)


def write_parquet(tmp_path: Path, name: str, columns: dict[str, pa.Array]) -> str:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return str(path)


def labelled(path: str, fmt: FileFormat = AUTO, fields: TextFields = TEXT, label_column: str = "label",
             id_column: str | None = None, label_names: tuple[str, ...] | None = None, max_labels: int = 1000,
             rules: LabelRules = LabelRules()):
    return read_labelled(path, fmt, fields, label_column, id_column, label_names, max_labels, rules)


def refused(call, *needles: str) -> str:
    """The InputFormatError's message, checked to contain every needle."""
    with pytest.raises(InputFormatError) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ---- CSV: RFC 4180 quoting, BOM, string ids -------------------------------------------------------

def test_csv_quoted_cells_with_newlines_commas_and_doubled_quotes(tmp_path):
    path = write(tmp_path, "reviews.csv",
                 'id,text,label\r\n'
                 '1,"第一行\n第二行",pos\r\n'
                 '2,"逗号, 和 ""引号"" 都在",neg\r\n'
                 '3,"多行\r\n\r\n空行之后, 还有 ""引号""",pos\r\n'
                 '4,平常的文本,neg\r\n')
    table = read_table(path, AUTO, ["id", "text"])
    assert table.column("text").to_pylist() == ["第一行\n第二行", '逗号, 和 "引号" 都在',
                                                '多行\r\n\r\n空行之后, 还有 "引号"', "平常的文本"]
    data = labelled(path, id_column="id")
    assert data.texts == table.column("text").to_pylist()
    assert data.ids == ["1", "2", "3", "4"]
    assert data.labels == [1, 0, 1, 0] and data.label_names == ("neg", "pos")


def test_utf8_bom_stays_out_of_the_first_column_name_and_ids_stay_strings(tmp_path):
    path = write(tmp_path, "excel.csv", "\ufeffdoc_id,text,label\n007,好,1\n010,坏,0\n")
    table = read_table(path, AUTO, ["doc_id", "text"])
    assert table.column_names == ["doc_id", "text", "label"]
    data = labelled(path, id_column="doc_id")
    assert data.ids == ["007", "010"]  # not 7 and 10
    assert data.texts == ["好", "坏"]


def test_tsv_suffix_means_tab_and_a_delimiter_can_be_set(tmp_path):
    tsv = write(tmp_path, "data.tsv", "text\tlabel\n有, 逗号\ta\n")
    assert labelled(tsv).texts == ["有, 逗号"]
    semi = write(tmp_path, "data.txt", "text;label\n有, 逗号;a\n")
    assert labelled(semi, FileFormat(format="csv", delimiter=";")).texts == ["有, 逗号"]


def test_malformed_csv_names_the_file(tmp_path):
    path = write(tmp_path, "ragged.csv", "text,label\na,1\nb,1,extra\n")
    refused(lambda: labelled(path), path, "not valid CSV")


# ---- encodings ---------------------------------------------------------------------------------

GB_ROWS = "text,label\nplain ascii,0\n这是中文评论，质量很好,1\n「引号」与繁體字,0\n"


def test_gb18030_file_read_with_its_encoding(tmp_path):
    path = write(tmp_path, "news.csv", GB_ROWS, "gb18030")
    data = labelled(path, FileFormat(encoding="gb18030"))
    assert data.texts == ["plain ascii", "这是中文评论，质量很好", "「引号」与繁體字"]
    assert data.labels == [0, 1, 0]


def test_gb18030_file_read_as_utf8_names_file_encoding_and_line(tmp_path):
    path = write(tmp_path, "news.csv", GB_ROWS, "gb18030")
    message = refused(lambda: labelled(path), path, "utf-8", "line 3", "input.format.encoding")
    assert message == f"{path}: not valid utf-8 text at line 3 (set input.format.encoding to the file's encoding)"


def test_bad_byte_far_into_a_big_file_is_found_on_its_line(tmp_path):
    # 1.5 MB: the encoding check reads it in 1 MiB chunks, and the first cut falls inside a character.
    content = "\n".join(["text,label"] + [f"第{i}行文本,1" for i in range(80_000)]).encode("utf-8")
    assert 0x80 <= content[1 << 20] < 0xC0  # a UTF-8 continuation byte
    good = tmp_path / "good.csv"
    good.write_bytes(content)
    assert len(labelled(str(good)).texts) == 80_000
    bad = tmp_path / "bad.csv"
    # Row 70000 is line 70002 (the header is line 1), past the first chunk.
    bad.write_bytes(content.replace("第70000行".encode(), b"\xff\xfe"))
    refused(lambda: labelled(str(bad)), str(bad), "not valid utf-8 text at line 70002")


def test_big5_file(tmp_path):
    path = write(tmp_path, "tw.csv", "text,label\n繁體中文的評論,好\n這個產品很差,壞\n", "big5")
    data = labelled(path, FileFormat(encoding="big5"))
    assert data.texts == ["繁體中文的評論", "這個產品很差"]
    assert [data.label_names[k] for k in data.labels] == ["好", "壞"]


def test_unknown_encoding_is_refused_when_configured():
    with pytest.raises(ValueError, match="unknown encoding 'gb2313'"):
        FileFormat(encoding="gb2313")
    with pytest.raises(ValueError, match="delimiter"):
        FileFormat(delimiter=",,")


# ---- JSON Lines --------------------------------------------------------------------------------

def test_jsonl_file_in_gbk(tmp_path):
    rows = [{"uid": 7, "title": "标题一", "body": "正文", "y": "好评"},
            {"uid": 8, "title": "标题二", "body": None, "y": "差评"}]
    path = write(tmp_path, "reviews.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "gbk")
    data = labelled(path, FileFormat(encoding="gbk"), TextFields(text_columns=("title", "body")), "y", "uid")
    assert data.texts == ["标题一\n正文", "标题二"]
    assert data.ids == ["7", "8"]
    assert [data.label_names[k] for k in data.labels] == ["好评", "差评"]


def test_malformed_jsonl_line_is_named(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n{"text": "c",}\n')
    refused(lambda: labelled(path), path, "line 4 is not a JSON object")


# ---- several text columns, sentence pairs, ids -------------------------------------------------

def test_text_columns_are_joined_and_the_pair_column_kept_apart(tmp_path):
    path = write(tmp_path, "qa.csv", "title,body,answer,label\n"
                                     "标题,正文,回答,a\n"
                                     "只有标题,,回答二,b\n"
                                     ',"正文也有,逗号",,a\n')
    fields = TextFields(text_columns=("title", "body"), separator=" | ", pair_column="answer")
    data = labelled(path, fields=fields)
    assert data.texts == ["标题 | 正文", "只有标题", "正文也有,逗号"]
    assert data.text_pairs == ["回答", "回答二", ""]
    assert labelled(path, fields=TextFields(text_columns=("title",))).text_pairs is None


def test_text_fields_are_checked():
    with pytest.raises(ValueError, match="at least one"):
        TextFields(text_columns=())
    with pytest.raises(ValueError, match="also one of text_columns"):
        TextFields(text_columns=("q", "a"), pair_column="a")
    with pytest.raises(ValueError, match="tuple of column names"):
        TextFields(text_columns="title")


def test_null_ids_are_refused_with_their_count(tmp_path):
    path = write(tmp_path, "ids.csv", "doc_id,text,label\n001,a,x\n,b,y\n,c,x\n004,d,y\n")
    refused(lambda: labelled(path, id_column="doc_id"), path, "column 'doc_id'", "2 row(s) have no id")
    jsonl = write(tmp_path, "ids.jsonl", '{"doc_id": "1", "text": "a", "label": 0}\n'
                                         '{"doc_id": null, "text": "b", "label": 1}\n')
    refused(lambda: labelled(jsonl, id_column="doc_id"), "1 row(s) have no id")


def test_parquet_integer_ids_become_strings_and_bytes_are_refused(tmp_path):
    path = write_parquet(tmp_path, "t.parquet", {"id": pa.array([7, 8]), "text": pa.array(["a", "b"]),
                                                 "label": pa.array(["x", "y"])})
    assert labelled(path, id_column="id").ids == ["7", "8"]
    raw = write_parquet(tmp_path, "raw.parquet", {"text": pa.array([b"\xd6\xd0", b"ok"]), "label": pa.array([0, 1])})
    refused(lambda: labelled(raw), raw, "column 'text' holds bytes")


# ---- labels ------------------------------------------------------------------------------------

def test_string_labels_get_sorted_names_unless_given(tmp_path):
    path = write(tmp_path, "s.csv", "text,label\na,pos\nb,neg\nc,neutral\nd,pos\n")
    data = labelled(path)
    assert data.label_names == ("neg", "neutral", "pos")
    assert data.labels == [2, 0, 1, 2]
    data = labelled(path, label_names=("pos", "neutral", "neg"))
    assert data.labels == [0, 2, 1, 0]


def test_given_label_names_refuse_unknown_labels(tmp_path):
    path = write(tmp_path, "s.csv", "text,label\na,pos\nb,meh\nc,neg\nd,meh\ne,huh\n")
    refused(lambda: labelled(path, label_names=("neg", "pos")), path, "column 'label'",
            "3 row(s) have labels outside ['neg', 'pos']: ['huh', 'meh']")


def test_integer_labels(tmp_path):
    path = write(tmp_path, "i.csv", "text,label\na,0\nb,2\n")
    data = labelled(path)
    assert data.labels == [0, 2] and data.label_names == ("0", "1", "2")
    bad = write(tmp_path, "neg.csv", "text,label\na,1\nb,-1\nc,5\n")
    refused(lambda: labelled(bad, label_names=("n", "p")), "2 row(s) have labels outside 0..1")
    refused(lambda: labelled(bad), "1 row(s) have labels outside 0..5")


def test_float_labels_are_refused_with_column_type_and_count(tmp_path):
    path = write(tmp_path, "f.csv", "text,label\na,1.0\nb,0.0\nc,1.0\n")
    refused(lambda: labelled(path), path, "column 'label'", "double", "3 row(s)", "strings or integers")


def test_nan_labels_are_refused(tmp_path):
    path = write_parquet(tmp_path, "nan.parquet", {"text": pa.array(["a", "b", "c", "d"]),
                                                   "label": pa.array([1.0, math.nan, 0.0, math.nan])})
    refused(lambda: labelled(path), path, "column 'label'", "double", "4 row(s), 2 of them NaN")


def test_boolean_labels_are_refused(tmp_path):
    path = write(tmp_path, "b.csv", "text,label\na,true\nb,false\nc,true\n")
    refused(lambda: labelled(path), path, "column 'label'", "bool", "3 row(s)")
    jsonl = write(tmp_path, "b.jsonl", '{"text": "a", "label": true}\n')
    refused(lambda: labelled(jsonl), "bool", "1 row(s)")


def test_null_labels_are_refused_with_their_count(tmp_path):
    path = write(tmp_path, "n.csv", "text,label\na,1\nb,\nc,\n")
    refused(lambda: labelled(path), path, "column 'label'", "2 row(s) have no label")
    names = write(tmp_path, "s.csv", "text,label\na,pos\nb,\n")  # an empty cell of a string column
    refused(lambda: labelled(names), "1 row(s) have no label")


def test_too_many_distinct_labels(tmp_path):
    path = write(tmp_path, "many.csv", "text,label\n" + "".join(f"t{i},l{i}\n" for i in range(5)))
    refused(lambda: labelled(path, max_labels=3), path, "column 'label'", "5 distinct labels", "max_labels=3")
    # An id-like integer column given as the label: few rows, but a huge highest value.
    ids = write(tmp_path, "ids.csv", "text,label\na,12\nb,1000000\n")
    refused(lambda: labelled(ids), "labels up to 1000000", "max_labels=1000")


# ---- labels that differ by a space or a capital ---------------------------------------------------

def test_surrounding_whitespace_never_makes_a_class_and_the_rows_are_counted(tmp_path):
    path = write(tmp_path, "ws.csv", 'text,label\na,positive\nb,"positive "\nc," negative"\nd,negative\n'
                                     "e,\u3000positive\ne,\" \"\n")
    refused(lambda: labelled(path), "1 row(s) have no label")  # a label of spaces is a missing label
    path = write(tmp_path, "ws.csv", 'text,label\na,positive\nb,"positive "\nc," negative"\nd,negative\n'
                                     "e,\u3000positive\n")  # a full-width space too
    data = labelled(path)
    assert data.label_names == ("negative", "positive") and data.labels == [1, 1, 0, 0, 1]
    assert data.labels_stripped == 3
    kept = labelled(path, rules=LabelRules(strip=False, case="keep"))
    assert len(kept.label_names) == 5 and kept.labels_stripped == 0


def test_labels_equal_up_to_case_are_an_error_naming_them(tmp_path):
    path = write(tmp_path, "case.csv", "text,label\na,positive\nb,Positive \nc,negative\nd,positive\n"
                                       "e,NEGATIVE\nf,neutral\n")
    refused(lambda: labelled(path), path, "column 'label' has labels equal up to case",
            "'NEGATIVE' (1 row(s)) and 'negative' (1 row(s))", "'Positive' (1 row(s)) and 'positive' (2 row(s))",
            "label_case: lower")
    lowered = labelled(path, rules=LabelRules(case="lower"))
    assert lowered.label_names == ("negative", "neutral", "positive") and lowered.labels == [2, 2, 0, 2, 0, 1]
    assert lowered.labels_lowered == 2 and lowered.labels_stripped == 1
    assert len(labelled(path, rules=LabelRules(case="keep")).label_names) == 5  # asked for: distinct classes
    given = labelled(path, label_names=("Negative", "Neutral", "Positive"), rules=LabelRules(case="lower"))
    assert given.label_names == ("negative", "neutral", "positive") and given.labels == lowered.labels


def test_a_label_known_only_in_another_case_says_so(tmp_path):
    path = write(tmp_path, "val.csv", "text,label\na,Positive\nb,negative\n")
    refused(lambda: labelled(path, label_names=("negative", "positive")), "labels outside ['negative', 'positive']",
            "'Positive' differs from 'positive' only by case", "label_case: lower")
    assert labelled(path, label_names=("negative", "positive"), rules=LabelRules(case="lower")).labels == [1, 0]


# ---- files and columns -------------------------------------------------------------------------

def test_missing_column_lists_the_columns_the_file_has(tmp_path):
    path = write(tmp_path, "m.csv", "review,sentiment\na,pos\n")
    refused(lambda: labelled(path, label_column="sentiment"), path, "column 'text' not found",
            "(file has: review, sentiment)")
    refused(lambda: labelled(path, fields=TextFields(text_columns=("review",))), "column 'label' not found")
    refused(lambda: labelled(path, fields=TextFields(text_columns=("review",)), label_column="sentiment",
                             id_column="uid"), "column 'uid' not found")


def test_unknown_suffix_and_missing_file(tmp_path):
    path = write(tmp_path, "data.xlsx", "")
    refused(lambda: labelled(path), path, "unsupported format '.xlsx'", ".csv", ".jsonl", ".parquet")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        labelled(str(tmp_path / "nope.csv"))
