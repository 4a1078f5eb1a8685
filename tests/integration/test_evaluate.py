"""The evaluation job end to end on a real local Ray and MLflow store, with a registered tiny classifier.

Its numbers are checked against the same model run in-process on the same rows, so the join of
scores back to labels (by id, through the streaming pipeline) is what is tested, not just that
metrics appear.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs.common import config as config_lib
from jobs.evaluate import main
from jobs.evaluation.runner import EvaluateConfig, run

REPO = Path(__file__).resolve().parents[2]
REGISTERED = "tiny-eval"


@pytest.fixture(scope="module")
def registered(mlflow_uri, tiny_model_dir: Path) -> str:
    """The debug-size random BERT registered as a model version with alias @candidate."""
    from jobs.common.registry import TextClassifierModel, log_and_register
    from jobs.common.tracking import TrackingConfig, client_for, prepare_tracking

    target = prepare_tracking(TrackingConfig(tracking_uri=mlflow_uri, experiment="test-evaluate-models"))
    run_id = client_for(target).create_run(target.experiment_id).info.run_id
    log_and_register(target, run_id, TextClassifierModel(), tiny_model_dir, REGISTERED, "candidate")
    return f"models:/{REGISTERED}@candidate"


def _config(tmp_path: Path, mlflow_uri: str, model: str, data: Path, *overrides: str) -> EvaluateConfig:
    return config_lib.load(EvaluateConfig, REPO / "configs/evaluate.local-cpu.yaml", [
        f"model={model}", f"input.path={data}", f"output_dir={tmp_path / 'evaluations'}",
        f"tracking.tracking_uri={mlflow_uri}", "predictor.concurrency=1", *overrides])


def _in_process_predictions(model_dir: Path, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    from model.classifier import classify_texts, load_classifier

    labels, _ = classify_texts(load_classifier(str(model_dir)), texts, max_length=128, text_pairs=pairs)
    return np.asarray(labels)


def test_a_prepared_split_is_measured_logged_and_linked_to_the_model_version(
        ray_local, mlflow_uri, registered, tiny_corpus: Path, tiny_model_dir: Path, tmp_path: Path, capsys):
    test_file = tiny_corpus / "test.parquet"
    config = _config(tmp_path, mlflow_uri, registered, test_file, f"input.train_path={tiny_corpus / 'train.parquet'}")
    outcome = run(config)

    truth = pq.read_table(test_file).to_pandas()
    predicted = _in_process_predictions(tiny_model_dir, truth["text"].tolist())
    expected_accuracy = float((predicted == truth["label"].to_numpy()).mean())
    assert outcome.counts.rows_in == outcome.counts.rows_out == len(truth)
    assert outcome.metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert outcome.result.confusion.sum() == len(truth) and outcome.metrics["rows_also_in_train_data"] == 0

    client = mlflow.MlflowClient(mlflow_uri)
    logged = client.get_run(outcome.run_id)
    metrics = logged.data.metrics
    for key in ("accuracy", "macro_f1", "ece", "precision_negative", "recall_positive", "f1_negative",
                "baseline_majority_eval_accuracy", "baseline_char_ngram_eval_macro_f1", "pipeline_rows_in"):
        assert key in metrics, key
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    train_majority = pq.read_table(tiny_corpus / "train.parquet").to_pandas()["label"].value_counts().idxmax()
    assert metrics["baseline_majority_eval_accuracy"] == pytest.approx(float((truth["label"] == train_majority).mean()))
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json", "reliability.png", "calibration.json",
            "evaluation.json"} <= artifacts
    confusion = json.loads(Path(client.download_artifacts(outcome.run_id, "confusion_matrix.json",
                                                           str(tmp_path))).read_text())
    assert sum(sum(row[1:]) for row in confusion["data"]) == len(truth)

    # The link, both ways: the run names the version, the version names the run.
    assert logged.data.tags["model_name"] == REGISTERED and logged.data.tags["job"] == "evaluate"
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert logged.data.tags["model_version"] == str(version.version)
    assert version.tags["last_evaluation_run_id"] == outcome.run_id
    assert json.loads(version.tags[f"evaluation.{logged.data.tags['data_digest']}"])["run_id"] == outcome.run_id

    from jobs.evaluate import report
    report(outcome, config)
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and "char 1-3-gram" in printed and "negative" in printed


def test_a_csv_with_a_title_and_a_body_as_a_pair_and_a_bad_row(ray_local, mlflow_uri, registered,
                                                                tiny_corpus: Path, tiny_model_dir: Path,
                                                                tmp_path: Path, capsys):
    rows = pq.read_table(tiny_corpus / "val.parquet").to_pandas().head(10)
    names = ["negative", "positive"]
    path = tmp_path / "news.csv"
    with path.open("w", encoding="gb18030", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["doc_id", "title", "body", "sentiment"])
        for i, (text, label) in enumerate(zip(rows["text"], rows["label"])):
            writer.writerow([f"d{i:03d}", text[:6], f"{text}\n第二行, \"引号\"", names[label]])
        writer.writerow(["d999", "", "", "positive"])  # no text at all: rejected, counted, listed
    code = main(["--config", str(REPO / "configs/evaluate.local-cpu.yaml"), "--set", f"model={registered}",
                 "--set", f"input.path={path}", "--set", f"output_dir={tmp_path / 'evaluations'}",
                 "--set", f"tracking.tracking_uri={mlflow_uri}", "--set", "predictor.concurrency=1",
                 "--set", "input.format.encoding=gb18030", "--set", "input.fields.text_columns=[title]",
                 "--set", "input.fields.pair_column=body", "--set", "input.label_column=sentiment",
                 "--set", "input.id_column=doc_id", "--set", "input.train_path=null"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert "11 rows, 10 scored, 1 rejected (empty_text 1)" in printed and "rejected d999: empty_text" in printed

    run_id = printed.split("MLflow run      : ")[1].split()[0]
    client = mlflow.MlflowClient(mlflow_uri)
    pairs = [f"{text}\n第二行, \"引号\"" for text in rows["text"]]
    expected = _in_process_predictions(tiny_model_dir, [t[:6] for t in rows["text"]], pairs)
    assert client.get_run(run_id).data.metrics["accuracy"] == pytest.approx(
        float((expected == rows["label"].to_numpy()).mean()))
    rejected = json.loads(Path(client.download_artifacts(run_id, "rejected_rows.json", str(tmp_path))).read_text())
    assert pd.DataFrame(rejected["data"], columns=rejected["columns"]).to_dict("records") == [
        {"id": "d999", "reason": "empty_text"}]


def test_labels_the_model_does_not_know_fail_before_any_compute(mlflow_uri, registered, tmp_path: Path, capsys):
    path = tmp_path / "other.jsonl"
    path.write_text('{"text": "好", "label": "sports"}\n{"text": "差", "label": "negative"}\n', encoding="utf-8")
    code = main(["--set", f"model={registered}", "--set", f"input.path={path}",
                 "--set", f"tracking.tracking_uri={mlflow_uri}",
                 "--set", f"output_dir={tmp_path / 'evaluations'}"])
    assert code == 65  # the data is at fault (jobs/common/cli.py)
    assert "other.jsonl" in capsys.readouterr().err and not (tmp_path / "evaluations").exists()
