"""The Ray Data read and tokenize stages on a real local Ray: the layout each setting runs, and its rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import resolve_parquet_files
from data_pipeline.ray_stages import StageResources, read_parquet, tokenized
from data_pipeline.tokenization import TokenizeBatch, tokenizer_json

MAX_LENGTH = 16
FILES, ROWS_PER_FILE = 3, 40


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reviews")
    for part in range(FILES):
        ids = [f"r{part}-{row:02d}" for row in range(ROWS_PER_FILE)]
        texts = [f"第{row}条评论，质量很好" + "物流很快" * (row % 7) for row in range(ROWS_PER_FILE)]
        pq.write_table(pa.table({"id": ids, "text": texts}), folder / f"part-{part}.parquet")
    return folder


def tokenize_with_ray(folder: Path, model_dir: Path, resources: StageResources) -> tuple[pa.Table, str]:
    files = resolve_parquet_files(str(folder))
    dataset = tokenized(read_parquet(files, ["id", "text"], resources), str(model_dir), "text", MAX_LENGTH, ["id"],
                        resources)
    table = pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    return table.sort_by("id"), dataset.stats()


def tokenize_in_process(folder: Path, model_dir: Path) -> pa.Table:
    stage = TokenizeBatch(str(model_dir), "text", MAX_LENGTH, ["id"], serialized=tokenizer_json(str(model_dir)))
    return pa.concat_tables(stage(pq.read_table(path)) for path in sorted(folder.glob("*.parquet"))).sort_by("id")


@pytest.mark.parametrize("read_in_tokenize_tasks", [False, True], ids=["read-tasks-beside", "read-in-tokenize-tasks"])
def test_each_layout_tokenizes_every_row_as_one_process_does(ray_local, reviews, tiny_model_dir,
                                                             read_in_tokenize_tasks):
    # batches of 16 rows cut each 40-row file across tokenizer calls
    resources = StageResources(read_cpus=0.25, tokenize_cpus=0.5, tokenize_concurrency=2, tokenize_batch_rows=16,
                               min_blocks=4, read_in_tokenize_tasks=read_in_tokenize_tasks)
    got, stats = tokenize_with_ray(reviews, tiny_model_dir, resources)
    assert got.num_rows == FILES * ROWS_PER_FILE
    assert got.equals(tokenize_in_process(reviews, tiny_model_dir))
    operators = [line for line in stats.splitlines() if line.startswith("Operator")]
    # fused, no read task needs a worker process of its own beside the tokenize tasks
    assert any("ReadParquet->MapBatches(tokenize_texts)" in line for line in operators) == read_in_tokenize_tasks, \
        operators
