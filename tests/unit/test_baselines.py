"""jobs/common/baselines.py: the driver measures the baselines on a bounded, deterministic sample."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.paths import resolve_parquet_files
from jobs.common.baselines import read_sample


def _write(path, start: int, n: int) -> None:
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(start, start + n)],
                             "text": [f"text {i}" for i in range(start, start + n)],
                             "label": [i % 2 for i in range(start, start + n)]}), path)


def test_a_split_over_the_limit_is_read_as_a_deterministic_sample(tmp_path):
    _write(tmp_path / "part-0.parquet", 0, 7)
    _write(tmp_path / "part-1.parquet", 7, 6)
    files = resolve_parquet_files(str(tmp_path))
    sample, total = read_sample(files, ["id", "label"], max_rows=5, seed=0, batch_rows=4)  # batches cross files
    assert total == 13 and len(sample["id"]) == len(sample["label"]) == 5
    assert len(set(sample["id"])) == 5 and set(sample["id"]) <= {f"r{i}" for i in range(13)}
    assert all(int(i[1:]) % 2 == label for i, label in zip(sample["id"], sample["label"]))  # rows stay whole
    assert read_sample(files, ["id"], max_rows=5, seed=0)[0] == {"id": sample["id"]}  # same seed, same rows
    assert read_sample(files, ["id"], max_rows=5, seed=1)[0] != {"id": sample["id"]}
    whole, total = read_sample(files, ["id"], max_rows=13, seed=0)
    assert whole["id"] == [f"r{i}" for i in range(13)] and total == 13
