"""The dataset summaries runs log: digests from Parquet footers, stable across copies and reads."""

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.common.datasets import file_summary, input_summary, parquet_summary, to_mlflow_dataset


def _write(path, texts, labels):
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "label": labels}), path)


def test_same_data_same_digest_wherever_and_whenever(tmp_path):
    _write(tmp_path / "a.parquet", ["好", "差", "还行"], [1, 0, 1])
    (tmp_path / "copy").mkdir()
    shutil.copy2(tmp_path / "a.parquet", tmp_path / "copy" / "a.parquet")  # keeps the modification time
    first, second = parquet_summary(str(tmp_path / "a.parquet")), parquet_summary(str(tmp_path / "copy"))
    assert first.digest == second.digest and len(first.digest) == 16
    assert first.num_rows == 3 and first.num_files == 1 and first.num_bytes == os.path.getsize(tmp_path / "a.parquet")
    assert first.schema == (("id", "string"), ("text", "string"), ("label", "int64"))
    assert first.source == str(tmp_path / "a.parquet") and first.name == "a.parquet"


def test_rewritten_or_other_data_other_digest(tmp_path):
    path = tmp_path / "a.parquet"
    _write(path, ["好", "差", "还行"], [1, 0, 1])
    os.utime(path, ns=(10**18, 10**18))
    before = parquet_summary(str(path)).digest
    _write(path, ["好", "差", "还行"], [1, 0, 0])  # one label differs: same size and column statistics
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    after_label = parquet_summary(str(path)).digest
    _write(path, ["好", "差"], [1, 0])
    os.utime(path, ns=(10**18, 10**18))  # even with the first mtime: the footer's row count differs
    assert len({before, after_label, parquet_summary(str(path)).digest}) == 3


def test_directory_sums_rows_and_files(tmp_path):
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d" / "part-0.parquet", ["好", "差"], [1, 0])
    _write(tmp_path / "d" / "part-1.parquet", ["还行"], [1])
    summary = input_summary(str(tmp_path / "d"))
    assert (summary.num_rows, summary.num_files) == (3, 2)
    assert summary.digest != parquet_summary(str(tmp_path / "d" / "part-0.parquet")).digest


def test_csv_is_hashed_by_content(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\n好,1\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("text,label\n好,1\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text("text,label\n好,0\n", encoding="utf-8")
    a = input_summary(str(tmp_path / "a.csv"), num_rows=1, columns=["text", "label"])
    assert a.digest == file_summary(str(tmp_path / "b.csv"), 1).digest
    assert a.digest != file_summary(str(tmp_path / "c.csv"), 1).digest
    assert a.num_rows == 1 and a.schema == (("text", "string"), ("label", "string"))


def test_mlflow_dataset_carries_digest_schema_and_profile(tmp_path):
    _write(tmp_path / "a.parquet", ["好", "差", "还行"], [1, 0, 1])
    summary = parquet_summary(str(tmp_path / "a.parquet"))
    entity = to_mlflow_dataset(summary)._to_mlflow_entity()
    assert entity.digest == summary.digest and entity.name == "a.parquet"
    assert json.loads(entity.source) == {"uri": str(tmp_path / "a.parquet")} and entity.source_type == "local"
    assert json.loads(entity.profile) == {"num_rows": 3, "num_files": 1, "num_bytes": summary.num_bytes}
    columns = json.loads(entity.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in columns] == [("id", "string"), ("text", "string"), ("label", "long")]


def test_logged_to_a_run_with_contexts(tmp_path):
    import mlflow

    from jobs.common.datasets import log_datasets

    _write(tmp_path / "a.parquet", ["好", "差", "还行"], [1, 0, 1])
    (tmp_path / "b.csv").write_text("text,label\n好,1\n", encoding="utf-8")
    train, test = parquet_summary(str(tmp_path / "a.parquet")), input_summary(str(tmp_path / "b.csv"), 1)
    uri, previous = f"sqlite:///{tmp_path / 'mlflow.db'}", mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as run:
            log_datasets([(train, "training"), (test, "test")])
    finally:
        mlflow.set_tracking_uri(previous)
    inputs = mlflow.MlflowClient(uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert {(i.tags[0].key, i.tags[0].value, i.dataset.digest) for i in inputs} == {
        ("mlflow.data.context", "training", train.digest), ("mlflow.data.context", "test", test.digest)}
