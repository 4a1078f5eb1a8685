"""Tests for data_pipeline/tokenization.py with the bundled bert-base-chinese vocabulary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from data_pipeline.text_limits import max_chars
from data_pipeline.tokenization import (PadCollate, TokenizeBatch, load_tokenizer, pad_batch, serialize_tokenizer,
                                         tokenizer_json)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]

MAX_LEN = 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from model.classifier import bundled_chinese_vocab, chinese_bert_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    chinese_bert_tokenizer(bundled_chinese_vocab()).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def tokenize(tokenizer_dir):
    return TokenizeBatch(tokenizer_dir, "text", MAX_LEN, keep_columns=("id", "label"))


def test_saved_tokenizer_has_the_full_chinese_vocab(tokenizer):
    assert tokenizer.is_fast
    assert tokenizer.vocab_size == 21128
    assert len(tokenizer) == 21128
    ids = tokenizer("这个手机很好用，推荐！", add_special_tokens=False)["input_ids"]
    assert len(ids) == 11  # one token per CJK character and punctuation mark
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids)[:4] == ["这", "个", "手", "机"]
    assert tokenizer.pad_token_id == 0 and tokenizer.cls_token_id != tokenizer.sep_token_id


def table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts,
                     "label": [i % 2 for i in range(len(texts))], "extra": [1.5] * len(texts)})


def test_tokenize_batch_adds_special_tokens_and_counts(tokenize, tokenizer):
    texts = ["好", "质量不错，物流很快", ""]
    out = tokenize(table(texts))
    assert out.column_names == ["id", "label", "input_ids", "num_tokens", "truncated"]
    assert out.schema.field("input_ids").type == pa.list_(pa.int32())
    assert out.schema.field("num_tokens").type == pa.int32()
    rows = out.column("input_ids").to_pylist()
    for text, ids, n in zip(texts, rows, out.column("num_tokens").to_pylist()):
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert n == len(ids) == len(text) + 2
    assert rows[2] == [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert out.column("truncated").to_pylist() == [False, False, False]


def test_kept_columns_pass_through_unchanged(tokenize):
    source = table(["一", "二", "三"])
    out = tokenize(source)
    assert out.column("id").to_pylist() == ["r0", "r1", "r2"]
    assert out.column("label").to_pylist() == [0, 1, 0]
    assert "text" not in out.column_names and "extra" not in out.column_names


def test_long_rows_are_truncated_to_max_length_and_flagged(tokenize, tokenizer):
    fits = "好" * (MAX_LEN - 2)  # exactly MAX_LEN tokens with [CLS] and [SEP]
    one_over = "差" * (MAX_LEN - 1)
    long = "这家店的东西质量很好" * 20
    out = tokenize(table([fits, one_over, "短", long]))
    rows = out.column("input_ids").to_pylist()
    assert out.column("truncated").to_pylist() == [False, True, False, True]
    assert out.column("num_tokens").to_pylist() == [MAX_LEN, MAX_LEN, 3, MAX_LEN]
    full = tokenizer(long)["input_ids"]
    for ids in (rows[0], rows[1], rows[3]):
        assert len(ids) == MAX_LEN
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert rows[3][:-1] == full[: MAX_LEN - 1]  # the text is cut, not dropped or shuffled
    assert rows[2] == tokenizer("短")["input_ids"]  # short rows keep the plain encoding


class SpyTokenizer:
    """Records the longest text the tokenizer is handed, then tokenizes as the real one does."""

    def __init__(self, inner):
        self.inner, self.longest = inner, 0

    def encode_batch(self, inputs, **kwargs):
        texts = [part for item in inputs for part in ((item,) if isinstance(item, str) else item)]
        self.longest = max([self.longest] + [len(t) for t in texts])
        return self.inner.encode_batch(inputs, **kwargs)

    def __getattr__(self, name):  # truncation settings go to the real one
        return getattr(self.inner, name)


def spied(tokenizer_dir, **kwargs) -> TokenizeBatch:
    stage = TokenizeBatch(tokenizer_dir, "text", MAX_LEN, keep_columns=("id",), **kwargs)
    stage.tokenizer = SpyTokenizer(stage.tokenizer)
    return stage


REVIEW = "这家店的东西质量很好, good value for money! 物流也快。"


def test_a_multi_megabyte_text_is_cut_before_the_tokenizer_sees_it_and_flagged(tokenizer_dir, tokenizer):
    huge = REVIEW * (5_000_000 // len(REVIEW))  # ~5 MB
    stage = spied(tokenizer_dir)
    out = stage(table(["短", huge]))
    assert stage.tokenizer.longest <= max_chars(MAX_LEN) < 5_000
    assert out.column("truncated").to_pylist() == [False, True]
    # the tokens kept are those of the whole text truncated (compared on a prefix too long for the bound)
    longer_than_bound = huge[: 4 * max_chars(MAX_LEN)]
    expected = tokenizer(longer_than_bound, truncation=True, max_length=MAX_LEN)["input_ids"]
    assert out.column("input_ids").to_pylist()[1] == expected


def test_the_cut_keeps_the_tokens_of_every_text_that_fits_and_of_long_ones(tokenizer_dir, tokenizer):
    bound = max_chars(MAX_LEN)
    texts = ["好", REVIEW, "好" + " " * (bound - 2) + "坏",  # fits, at the bound only through whitespace
             "x" * 150 + " 好",  # a word over 100 characters is one [UNK]
             REVIEW * (bound // len(REVIEW)), REVIEW * (bound // len(REVIEW) + 1),  # either side of the bound
             "good value " * 1000, "好" * 3 * bound]
    stage = spied(tokenizer_dir)
    out = stage(table(texts))
    for text, ids, cut in zip(texts, out.column("input_ids").to_pylist(), out.column("truncated").to_pylist()):
        whole = tokenizer(text, truncation=True, max_length=MAX_LEN)["input_ids"]
        assert ids == whole, text[:30]
        assert cut == (len(tokenizer(text)["input_ids"]) > MAX_LEN)
    assert stage.tokenizer.longest <= bound


def test_a_text_over_the_bound_that_is_mostly_whitespace_keeps_the_tokens_of_its_first_characters(tokenizer_dir,
                                                                                                   tokenizer):
    padded = "好" + " " * 5 * max_chars(MAX_LEN) + "坏"  # 3 tokens in all, but far over the bound
    out = spied(tokenizer_dir)(table([padded]))
    assert out.column("truncated").to_pylist() == [True]  # cut, and said so
    assert out.column("input_ids").to_pylist() == [tokenizer("好")["input_ids"]]


def test_sentence_pairs_are_cut_per_segment(tokenizer_dir, tokenizer):
    huge = REVIEW * (1_000_000 // len(REVIEW))
    stage = spied(tokenizer_dir, pair_column="pair")
    out = stage(pa.table({"id": ["a", "b"], "text": ["很好", huge], "pair": [huge, "很好"]}))
    assert stage.tokenizer.longest <= max_chars(MAX_LEN)
    assert out.column("truncated").to_pylist() == [True, True]
    longer_than_bound = huge[: 4 * max_chars(MAX_LEN)]
    assert out.column("input_ids").to_pylist() == [
        tokenizer("很好", longer_than_bound, truncation="longest_first", max_length=MAX_LEN)["input_ids"],
        tokenizer(longer_than_bound, "很好", truncation="longest_first", max_length=MAX_LEN)["input_ids"]]


def test_custom_text_column(tokenizer_dir, tokenizer):
    out = TokenizeBatch(tokenizer_dir, "review", 8)(pa.table({"review": ["很好"]}))
    assert out.column_names == ["input_ids", "num_tokens", "truncated"]
    assert out.column("input_ids").to_pylist() == [tokenizer("很好")["input_ids"]]


def test_the_stage_encodes_as_the_transformers_tokenizer_does(tokenizer_dir, tokenizer):
    """The stage runs the Rust tokenizer alone (no transformers in its processes): same ids, same cut."""
    texts = ["好", "", "  ", "这家店的东西质量很好", REVIEW, "Ｆｕｌｌ　ｗｉｄｔｈ ÀÉÎ 😀 mixed 中文 text",
             "好" * (MAX_LEN - 2), "好" * (MAX_LEN + 5), REVIEW * 3, "x" * 150, "[CLS] [SEP] [MASK] literal"]
    pairs = list(reversed(texts))
    for pair_column in (None, "pair"):
        stage = TokenizeBatch(tokenizer_dir, "text", MAX_LEN, pair_column=pair_column)
        out = stage(pa.table({"text": texts, "pair": pairs}))
        expected = tokenizer(texts, pairs if pair_column else None, truncation="longest_first", max_length=MAX_LEN,
                             return_token_type_ids=True)
        assert out.column("input_ids").to_pylist() == expected["input_ids"]
        if pair_column:
            assert out.column("token_type_ids").to_pylist() == expected["token_type_ids"]
    serialized = tokenizer_json(tokenizer_dir)
    assert TokenizeBatch("no/such/path", "text", MAX_LEN, serialized=serialized)(
        pa.table({"text": texts})).column("input_ids").to_pylist() == tokenizer(
            texts, truncation=True, max_length=MAX_LEN)["input_ids"]  # built from the serialized form alone


def test_a_tokenize_process_imports_neither_torch_nor_transformers(tokenizer_dir, tmp_path):
    """Ray Data unpickles the stage in every process that plans or runs it: ~4 s of imports saved in each."""
    (tmp_path / "tokenizer.json").write_text(tokenizer_json(tokenizer_dir))
    script = f"""
import sys
from pathlib import Path
import pyarrow as pa
from data_pipeline.tokenization import tokenize_texts
serialized = Path({str(tmp_path / "tokenizer.json")!r}).read_text()
out = tokenize_texts(pa.table({{"text": ["很好"]}}), "unused", "text", 8, serialized=serialized)
assert out.column("num_tokens").to_pylist() == [4], out
print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_tokenize_texts_cuts_a_block_into_calls_of_batch_rows(tokenizer_dir, monkeypatch):
    """A fused read hands the stage whole blocks: no tokenizer call sees more than batch_rows rows."""
    import data_pipeline.tokenization as tokenization

    texts = [f"第{i}条很好" + "快" * i for i in range(7)]
    block = pa.table({"id": list(range(7)), "text": texts})
    serialized = tokenizer_json(tokenizer_dir)
    whole = tokenization.tokenize_texts(block, tokenizer_dir, "text", MAX_LEN, ["id"], serialized=serialized)
    calls = []
    real_call = TokenizeBatch.__call__

    def counted_call(self, batch):
        calls.append(batch.num_rows)
        return real_call(self, batch)

    monkeypatch.setattr(TokenizeBatch, "__call__", counted_call)
    cut = tokenization.tokenize_texts(block, tokenizer_dir, "text", MAX_LEN, ["id"], serialized=serialized,
                                      batch_rows=3)
    assert calls == [3, 3, 1]
    assert cut.equals(whole)  # the same rows, in order


def test_the_stage_cuts_on_the_tokenizers_truncation_side(tokenizer_dir):
    left = load_tokenizer(tokenizer_dir)
    left.truncation_side = "left"
    text = "一二三四五六七八九十" * 3
    stage = TokenizeBatch("unused", "text", MAX_LEN, serialized=serialize_tokenizer(left))
    expected = left([text], truncation=True, max_length=MAX_LEN)["input_ids"]
    assert stage(pa.table({"text": [text]})).column("input_ids").to_pylist() == expected
    assert expected[0][1] != left(text)["input_ids"][1]  # the start was cut: the left side


def ragged(rows: list[list[int]]) -> np.ndarray:
    """What Ray Data hands a collate function for a list<int32> column: an object array of arrays."""
    array = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        array[i] = np.asarray(row, dtype=np.int32)
    return array


def test_pad_batch_pads_to_the_longest_row_of_the_batch():
    rows = [[101, 5, 102], [101, 5, 6, 7, 8, 9, 102], [101, 102]]
    out = pad_batch({"input_ids": ragged(rows), "label": np.array([1, 0, 1], dtype=np.int32)}, pad_id=99)
    assert out["input_ids"].shape == (3, 7)  # not the tokenizer's max_length
    assert out["input_ids"].dtype == torch.int64
    assert out["input_ids"].tolist() == [[101, 5, 102, 99, 99, 99, 99], [101, 5, 6, 7, 8, 9, 102],
                                         [101, 102, 99, 99, 99, 99, 99]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7, [1, 1, 0, 0, 0, 0, 0]]
    assert out["attention_mask"].sum(dim=1).tolist() == [3, 7, 2]
    assert out["labels"].dtype == torch.int64 and out["labels"].tolist() == [1, 0, 1]


def test_pad_batch_without_labels():
    batch = {"input_ids": ragged([[1, 2], [3]]), "label": np.array([0, 1])}
    assert "labels" not in pad_batch(batch, label_column=None)
    assert "labels" not in pad_batch({"input_ids": ragged([[1, 2], [3]])})


def test_pad_batch_of_an_empty_batch():
    out = pad_batch({"input_ids": ragged([])})
    assert tuple(out["input_ids"].shape) == (0, 0) and tuple(out["attention_mask"].shape) == (0, 0)


def test_tokenize_then_pad_round_trip(tokenize, tokenizer):
    texts = ["好", "物流很快", "这家店的东西质量很好" * 5]
    out = tokenize(table(texts))
    batch = {name: out.column(name).to_numpy(zero_copy_only=False) for name in out.column_names}
    padded = pad_batch(batch, tokenizer.pad_token_id)
    lengths = out.column("num_tokens").to_pylist()
    assert padded["input_ids"].shape == (3, max(lengths)) == (3, MAX_LEN)
    assert padded["attention_mask"].sum(dim=1).tolist() == lengths
    for row, mask, ids in zip(padded["input_ids"], padded["attention_mask"], out.column("input_ids").to_pylist()):
        assert row[mask.bool()].tolist() == ids
        assert (row[~mask.bool()] == tokenizer.pad_token_id).all()


def test_pad_collate_returns_ids_only_when_asked():
    batch = {"id": np.array(["a", "b"], dtype=object), "input_ids": ragged([[1, 2, 3], [4]]),
             "label": np.array([1, 0])}
    with_ids = PadCollate(pad_id=0, keep_ids=True)(batch)
    assert with_ids["ids"] == ["a", "b"]
    assert with_ids["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert with_ids["labels"].tolist() == [1, 0]
    without = PadCollate(pad_id=0)(batch)
    assert "ids" not in without and without["labels"].tolist() == [1, 0]
    unlabelled = PadCollate(pad_id=7, label_column=None, keep_ids=True)(batch)
    assert "labels" not in unlabelled and unlabelled["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]

