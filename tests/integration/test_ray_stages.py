"""The Ray Data read + tokenize stages on a real local Ray: reading inside the tokenize tasks changes the plan only."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import resolve_parquet_files
from data_pipeline.ray_stages import StageResources, read_parquet, tokenized


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from model.classifier import bundled_chinese_vocab, chinese_bert_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    chinese_bert_tokenizer(bundled_chinese_vocab()).save_pretrained(directory)
    return str(directory)


def _stage(files, tokenizer_dir, resources):
    ds = tokenized(read_parquet(files, ["id", "text"], resources), tokenizer_dir, "text", 16, ["id"], resources)
    ds = ds.materialize()
    return ds.to_arrow_refs(), ds.stats()


def test_read_in_tokenize_tasks_fuses_the_read_and_keeps_rows_columns_and_types(ray_local, tmp_path, tokenizer_dir):
    import ray

    folder = tmp_path / "texts"
    folder.mkdir()
    for part in range(3):
        ids = [f"{part}-{i}" for i in range(40)]
        pq.write_table(pa.table({"id": ids, "text": [f"这家店的菜很好吃{i}" * (1 + i % 5) for i in range(40)]}),
                       folder / f"part-{part}.parquet")
    files = resolve_parquet_files(str(folder))

    separate_refs, separate_stats = _stage(files, tokenizer_dir, StageResources(min_blocks=6))
    fused_refs, fused_stats = _stage(files, tokenizer_dir, StageResources(
        tokenize_cpus=0.5, tokenize_concurrency=2, read_in_tokenize_tasks=True))

    assert "ReadParquet->MapBatches(tokenize_texts)" in fused_stats
    assert "ReadParquet->MapBatches(tokenize_texts)" not in separate_stats
    separate = pa.concat_tables(ray.get(separate_refs)).sort_by("id")
    fused = pa.concat_tables(ray.get(fused_refs)).sort_by("id")
    assert fused.num_rows == 120
    assert fused.schema == separate.schema
    assert fused.equals(separate)
