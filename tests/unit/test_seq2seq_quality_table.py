"""bench/seq2seq_quality.py's per-source figures: scores per corpus value and in total, the markdown rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from bench.seq2seq_quality import _corpus_names, markdown_table, per_source
from data_pipeline.pinyin import char_by_char_pinyin


def test_scores_per_source_and_in_total_with_the_char_by_char_baseline():
    sources = ["银行", "行人", "长度"]
    references = [["yin2", "hang2"], ["xing2", "ren2"], ["chang2", "du4"]]
    names = ["news", "reviews", "news"]
    predicted = [char_by_char_pinyin(s) for s in sources]  # yin2 xing2 | xing2 ren2 | zhang3 du4
    results = per_source(names, sources, references, predicted, {"行", "长"})
    assert list(results) == ["news", "reviews", "total"]
    assert (results["news"].syllables, results["news"].syllables_correct) == (4, 2)
    assert (results["news"].polyphonic, results["news"].polyphonic_correct) == (2, 0)
    assert results["reviews"].exact == 1 and results["total"].rows == 3 and results["total"].syllables_correct == 4
    table = markdown_table({"pypinyin char by char": results})
    assert table[2] == "| news | 2 / 4 / 2 | pypinyin char by char | 50.00% | 0.00% | 0.00% |"
    assert table[-1] == "| total | 3 / 6 / 3 | pypinyin char by char | 66.67% | 33.33% | 33.33% |"


def test_one_source_has_no_total_row_and_old_files_are_one_corpus(tmp_path):
    path = tmp_path / "test.parquet"
    pq.write_table(pa.table({"id": ["a"], "source": ["好"], "target": ["hao3"]}), path)  # written before `corpus`
    assert _corpus_names(str(path), 1) == ["all"]
    assert list(per_source(["all"], ["好"], [["hao3"]], [["hao3"]], set())) == ["all"]
