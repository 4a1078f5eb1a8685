"""The promotion gate end to end against a real `mlflow server` (one for the module) and a real local Ray.

Two versions of the debug-size BERT whose classifier head ignores the text (weights zero, a bias
for one class) make a clearly better and a clearly worse model at no training cost: on an
evaluation file that is mostly positive, "always positive" beats "always negative" on accuracy
and macro-F1, and "always negative" is below the char n-gram baseline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.evaluation.runner import file_digest
from jobs.promote import main
from tracking_server import point_mlflow_back_at_the_session_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(mlflow_server: str) -> str:
    yield mlflow_server  # the session's server: the promote-* model names are this module's own
    point_mlflow_back_at_the_session_store()


def _constant_model(source: Path, out: Path, label: int) -> Path:
    """A copy of ``source`` that predicts ``label`` for every text: head weights zero, bias for one class."""
    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(source, out)
    model = AutoModelForSequenceClassification.from_pretrained(source)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0 if i == label else -5.0 for i in range(2)]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_corpus: Path, tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    names = json.loads((tiny_corpus / "labels.json").read_text())
    root = tmp_path_factory.mktemp("promote-models")
    return {name: _constant_model(tiny_model_dir, root / f"always-{name}", names.index(name))
            for name in ("negative", "positive")}


@pytest.fixture(scope="module")
def eval_file(tiny_corpus: Path, tmp_path_factory) -> Path:
    """Every positive row of the tiny corpus's val and test splits and two negative ones (prepare_corpus's layout)."""
    table = pa.concat_tables([pq.read_table(tiny_corpus / f"{split}.parquet") for split in ("val", "test")])
    names = json.loads(table.schema.metadata[b"label_names"])
    labels = table.column("label").to_pylist()
    negatives = [i for i, label in enumerate(labels) if names[label] == "negative"][:2]
    keep = sorted(negatives + [i for i, label in enumerate(labels) if names[label] == "positive"])
    path = tmp_path_factory.mktemp("promote-data") / "mostly-positive.parquet"
    pq.write_table(table.take(keep), path)
    return path


def _shares(path: Path) -> tuple[float, float]:
    table = pq.read_table(path)
    names = json.loads(table.schema.metadata[b"label_names"])
    labels = [names[label] for label in table.column("label").to_pylist()]
    return labels.count("negative") / len(labels), labels.count("positive") / len(labels)


def _register(server: str, name: str, model_dir: Path, alias: str | None) -> str:
    from jobs.common.registry import TextClassifierModel, log_and_register
    from jobs.common.tracking import TrackingConfig, client_for, prepare_tracking

    target = prepare_tracking(TrackingConfig(tracking_uri=server, experiment="test-promote-models"))
    run_id = client_for(target).create_run(target.experiment_id).info.run_id
    return log_and_register(target, run_id, TextClassifierModel(), model_dir, name, alias).version


def _promote(server: str, name: str, data: Path, tiny_corpus: Path, tmp_path: Path, capsys, *overrides: str):
    code = main(["--config", str(REPO / "configs/promote.local-cpu.yaml"), "--set", f"registered_model={name}",
                 "--set", f"input.path={data}", "--set", f"input.train_path={tiny_corpus / 'train.parquet'}",
                 "--set", f"output_dir={tmp_path / 'promotions'}", "--set", f"tracking.tracking_uri={server}",
                 "--set", "predictor.concurrency=1", *[item for o in overrides for item in ("--set", o)]])
    captured = capsys.readouterr()
    run = None
    if "MLflow run : " in captured.out:
        run = mlflow.MlflowClient(server).get_run(captured.out.split("MLflow run : ")[1].split()[0])
    return code, captured, run


def _production(client: mlflow.MlflowClient, name: str) -> str | None:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}.get("production")


def test_a_better_candidate_is_promoted_and_the_decision_recorded(ray_local, server, models, eval_file,
                                                                  tiny_corpus, tmp_path, capsys):
    name = "promote-better"
    old = _register(server, name, models["negative"], "production")
    new = _register(server, name, models["positive"], "candidate")
    # The baseline is left out of this gate: a constant model is no match for it on most data.
    code, captured, run = _promote(server, name, eval_file, tiny_corpus, tmp_path, capsys,
                                   "require_beat_baseline=false")
    assert code == 0, captured.err
    client = mlflow.MlflowClient(server)
    assert _production(client, name) == new

    negative_share, positive_share = _shares(eval_file)
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    assert metrics["candidate_accuracy"] == pytest.approx(positive_share)
    assert metrics["production_accuracy"] == pytest.approx(negative_share)
    assert metrics["candidate_macro_f1"] > metrics["production_macro_f1"]
    assert "baseline_char_ngram_macro_f1" in metrics and "baseline_char_ngram_accuracy" in metrics
    assert tags["decision"] == "promoted" and tags["production_version_after"] == new
    assert tags["reason"].startswith("candidate macro_f1") and "beats production" in tags["reason"]
    assert (params["candidate_version"], params["production_version"]) == (new, old)
    assert params["metric"] == "macro_f1" and float(params["margin"]) == 0.0
    # Both evaluations went through the evaluation job, on the file promote read.
    digest = file_digest(str(eval_file))
    assert params["data_digest"] == tags["data_digest"] == digest
    for role, version in (("candidate", new), ("production", old)):
        evaluation = client.get_run(tags[f"{role}_evaluation_run_id"])
        assert evaluation.data.tags["job"] == "evaluate" and evaluation.data.tags["data_digest"] == digest
        assert evaluation.data.tags["model_version"] == version
    assert "decision   : promoted" in tags["mlflow.note.content"]

    version_tags = client.get_model_version(name, new).tags
    assert version_tags["promotion.decision"] == "promoted" and version_tags["promotion.run_id"] == run.info.run_id
    assert version_tags["promotion.metric"] == "macro_f1" and version_tags["promotion.data_digest"] == digest
    assert version_tags["promotion.production_version"] == old
    assert float(version_tags["promotion.candidate_value"]) == pytest.approx(metrics["candidate_macro_f1"], abs=1e-6)
    assert float(version_tags["promotion.production_value"]) == pytest.approx(metrics["production_macro_f1"],
                                                                              abs=1e-6)
    assert "decision   : promoted" in captured.out and f"@production: v{new} (was v{old})" in captured.out


def test_a_worse_candidate_is_kept_and_production_stays(ray_local, server, models, eval_file, tiny_corpus,
                                                        tmp_path, capsys):
    name = "promote-worse"
    old = _register(server, name, models["positive"], "production")
    new = _register(server, name, models["negative"], "candidate")
    code, captured, run = _promote(server, name, eval_file, tiny_corpus, tmp_path, capsys, "margin=0.01")
    assert code == 0, captured.err  # a kept candidate is a decision, not a failure
    client = mlflow.MlflowClient(server)
    assert _production(client, name) == old
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["decision"] == "kept" and tags["production_version_after"] == old
    assert "does not beat production" in tags["reason"] and "margin 0.01" in tags["reason"]
    assert metrics["candidate_macro_f1"] < metrics["production_macro_f1"]
    version_tags = client.get_model_version(name, new).tags
    assert version_tags["promotion.decision"] == "kept" and version_tags["promotion.run_id"] == run.info.run_id
    assert version_tags["promotion.reason"] == tags["reason"]
    assert not any(key.startswith("promotion.") for key in client.get_model_version(name, old).tags)
    assert "decision   : kept" in captured.out and f"@production: v{old} (unchanged)" in captured.out


def test_with_no_production_a_candidate_below_the_baseline_is_kept(ray_local, server, models, eval_file,
                                                                   tiny_corpus, tmp_path, capsys):
    name = "promote-first"
    new = _register(server, name, models["negative"], "candidate")
    code, captured, run = _promote(server, name, eval_file, tiny_corpus, tmp_path, capsys)
    assert code == 0, captured.err
    client = mlflow.MlflowClient(server)
    assert _production(client, name) is None
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["decision"] == "kept" and "char n-gram baseline" in tags["reason"]
    assert metrics["candidate_macro_f1"] < metrics["baseline_char_ngram_macro_f1"]
    assert "production_macro_f1" not in metrics and run.data.params["production_version"] == "none"
    version_tags = client.get_model_version(name, new).tags
    assert version_tags["promotion.decision"] == "kept" and version_tags["promotion.production_version"] == "none"
    assert float(version_tags["promotion.baseline_value"]) == pytest.approx(
        metrics["baseline_char_ngram_macro_f1"], abs=1e-6)


def test_a_candidate_already_in_production_is_recorded_as_no_change(server, models, eval_file, tiny_corpus,
                                                                    tmp_path, capsys):
    name = "promote-same"
    version = _register(server, name, models["positive"], "candidate")
    client = mlflow.MlflowClient(server)
    client.set_registered_model_alias(name, "production", version)
    code, captured, run = _promote(server, name, eval_file, tiny_corpus, tmp_path, capsys)
    assert code == 0, captured.err
    assert run.data.tags["decision"] == "no_change" and "already @production" in run.data.tags["reason"]
    assert "candidate_evaluation_run_id" not in run.data.tags  # nothing was measured
    assert client.get_model_version(name, version).tags["promotion.decision"] == "no_change"
    assert _production(client, name) == version


def test_no_candidate_is_a_failure_that_changes_nothing(server, models, eval_file, tiny_corpus, tmp_path, capsys):
    name = "promote-none"
    version = _register(server, name, models["positive"], "production")
    code, captured, run = _promote(server, name, eval_file, tiny_corpus, tmp_path, capsys)
    assert code == 1 and run is None
    assert f"{name} has no @candidate version (aliases: production)" in captured.err
    client = mlflow.MlflowClient(server)
    assert _production(client, name) == version
    experiment = client.get_experiment_by_name("promote")
    assert experiment is None or not client.search_runs([experiment.experiment_id],
                                                         f"tags.model_name = '{name}'")
    code, captured, _ = _promote(server, "no-such-model", eval_file, tiny_corpus, tmp_path, capsys)
    assert code == 1 and "no registered model named 'no-such-model'" in captured.err


def test_an_evaluation_that_fails_is_a_failure_that_changes_nothing(server, models, tiny_corpus, tmp_path, capsys):
    name = "promote-bad-data"
    _register(server, name, models["positive"], "candidate")
    data = tmp_path / "other-labels.jsonl"
    data.write_text('{"text": "好", "label": "sports"}\n{"text": "差", "label": "negative"}\n', encoding="utf-8")
    code, captured, run = _promote(server, name, data, tiny_corpus, tmp_path, capsys)
    assert code == 65 and run is None  # the data is at fault (jobs/common/cli.py)
    assert "promotion failed" in captured.err and "other-labels.jsonl" in captured.err
    client = mlflow.MlflowClient(server)
    assert _production(client, name) is None
    assert not any(key.startswith("promotion.") for key in client.get_model_version(name, "1").tags)
