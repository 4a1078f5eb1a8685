"""A user's own data end to end on a real local Ray and MLflow store: CSV exports with a title and a
body, given splits, three imbalanced labels with class weights, scoring a CSV, a zero-row input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.common import config as config_lib
from jobs.scoring.sink import committed_files, read_manifest
from tools.make_example_csv import build

REPO = Path(__file__).resolve().parents[2]
SIZES = {"train": {"positive": 48, "negative": 24, "news": 8}, "dev": {"positive": 8, "negative": 4, "news": 2},
         "test": {"positive": 8, "negative": 4, "news": 2}}


@pytest.fixture(scope="module")
def example_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example-csv")
    build(out, SIZES)
    return out


@pytest.fixture(scope="module")
def prepared(example_csv: Path, tmp_path_factory) -> Path:
    from jobs.corpus.prepare import PrepareCorpusConfig

    out = tmp_path_factory.mktemp("corpus")
    config = config_lib.load(PrepareCorpusConfig, REPO / "configs/prepare_corpus.example-csv.yaml", [
        f"input.splits.train={example_csv / 'train.csv'}", f"input.splits.val={example_csv / 'dev.csv'}",
        f"input.splits.test={example_csv / 'test.csv'}", f"output_dir={out}", "log_to_mlflow=false"])
    from jobs.corpus.prepare import run

    stats = run(config)
    assert stats.rows_per_split_label["train"] == {"negative": 24, "news": 8, "positive": 48}
    assert stats.rows_per_split["test"] == 14 and stats.cross_split_removed >= 1  # the copies of train rows
    return out


def test_imbalanced_three_labels_fine_tune_with_class_weights_and_report_per_class(
        ray_local, mlflow_uri, prepared: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    from jobs.finetune_classifier import report
    from jobs.train.classifier import FinetuneConfig, run

    config = config_lib.load(FinetuneConfig, REPO / "configs/finetune_classifier.tiny.yaml", [
        f"data.train={prepared / 'train.parquet'}", f"data.val={prepared / 'val.parquet'}",
        f"data.test={prepared / 'test.parquet'}", f"model.name_or_path={tiny_model_dir}",
        f"run.storage_path={tmp_path / 'ray'}", f"tracking.tracking_uri={mlflow_uri}", "optim.epochs=1",
        "optim.class_weights=balanced", "run.checkpoint_metric=val_macro_f1", "run.checkpoint_mode=max",
        "baselines=true", "tracking.registered_model=tiny-news"])
    outcome = run(config)
    m = outcome.metrics
    for label in ("negative", "news", "positive"):
        assert {f"test_precision_{label}", f"test_recall_{label}", f"test_f1_{label}"} <= set(m)
    assert m["test_rows"] == 14 and "baseline_char_ngram_test_macro_f1" in m
    client = mlflow.MlflowClient(mlflow_uri)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"class_weights.json", "label_counts.json", "labels.json"} <= artifacts
    weights_file = client.download_artifacts(outcome.run_id, "class_weights.json", str(tmp_path))
    weights = json.loads(Path(weights_file).read_text())
    assert weights == pytest.approx({"negative": 80 / 72, "news": 80 / 24, "positive": 80 / 144})
    assert client.get_run(outcome.run_id).data.params["text_pair_column"] == "text_pair"
    # The registered pyfunc reads the second text from a text_pair column, as the job trained it.
    import pandas as pd

    from model.classifier import classify_texts, load_classifier
    titles, bodies = ["球队夺冠", "质量很差"], ["昨晚的决赛\n比分三比一", "用了两天就坏了"]
    predicted = mlflow.pyfunc.load_model(outcome.model_uri).predict(pd.DataFrame({"text": titles, "text_pair": bodies}))
    expected, _ = classify_texts(load_classifier(outcome.model_dir), titles, max_length=64, text_pairs=bodies)
    assert predicted["label"].tolist() == expected
    report(outcome, config)
    printed = capsys.readouterr().out
    assert "train negative=24, news=8, positive=48" in printed and "precision  recall" in printed
    never = [c for c in ("negative", "news", "positive") if m[f"test_predicted_{c}"] == 0]
    assert ("WARNING: the model never predicts" in printed) == bool(never)


def test_a_csv_export_is_scored_with_its_own_id_column_and_a_title_body_pair(
        ray_local, mlflow_uri, example_csv: Path, tiny_model_dir: Path, tmp_path: Path):
    from jobs.scoring.batch import BatchInferConfig, run

    config = config_lib.load(BatchInferConfig, REPO / "configs/batch_infer.local-cpu.yaml", [
        f"input.path={example_csv / 'test.csv'}", "input.format.encoding=gb18030", "input.id_column=doc_id",
        "input.fields.text_columns=[title]", "input.fields.pair_column=body", f"output_dir={tmp_path / 'scores'}",
        f"model={tiny_model_dir}", f"tracking.tracking_uri={mlflow_uri}", "predictor.concurrency=1"])
    outcome = run(config)
    scored = pq.read_table(committed_files(outcome.output_path))
    assert outcome.rows_in == outcome.rows_out == 15 == scored.num_rows  # 14 + 1 row copied from train
    assert sorted(scored.column("id").to_pylist()) == [f"te{i:05d}" for i in range(15)]
    assert read_manifest(outcome.output_path)["source"] == str(example_csv / "test.csv")
    assert not (tmp_path / "scores" / "_staging" / Path(outcome.output_path).name).exists()


@pytest.mark.parametrize("as_directory", [False, True])
def test_a_zero_row_parquet_input_commits_an_empty_output(ray_local, mlflow_uri, tiny_model_dir: Path,
                                                         tmp_path: Path, as_directory: bool):
    from jobs.scoring.batch import BatchInferConfig, run

    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   folder / "empty.parquet")
    config = config_lib.load(BatchInferConfig, REPO / "configs/batch_infer.local-cpu.yaml", [
        f"input.path={folder if as_directory else folder / 'empty.parquet'}", f"output_dir={tmp_path / 'scores'}",
        f"model={tiny_model_dir}", f"tracking.tracking_uri={mlflow_uri}", "predictor.concurrency=1"])
    outcome = run(config)
    manifest = read_manifest(outcome.output_path)
    assert manifest is not None, "the output was not committed"
    assert (outcome.rows_in, outcome.rows_out, outcome.rows_rejected) == (0, 0, 0)
    assert manifest["rows_in"] == manifest["rows_out"] == 0 and committed_files(outcome.output_path) == []
