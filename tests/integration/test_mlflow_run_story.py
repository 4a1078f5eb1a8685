"""What MLflow shows of a training run, against a real `mlflow server`: datasets with digests and contexts,
system metrics per node, a description, the registered version's signature, input example and tags,
and experiments that open in the model-training view. Then an evaluation of that version on the test
split shows the same test digest.

One tiny fine-tuning run (one epoch, three steps, the debug-size BERT) serves every assertion.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from jobs.common import config as config_lib
from jobs.common.datasets import parquet_summary
from jobs.common.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, TrackingConfig, prepare_tracking
from jobs.train.classifier import ClassifierData, ClassifierModel, ClassifierOptim, FinetuneConfig
from jobs.train.classifier import run as run_finetune
from jobs.train.settings import RunSettings, ScalingSettings
from tracking_server import point_mlflow_back_at_the_session_store

REPO = Path(__file__).resolve().parents[2]
REGISTERED = "story-sentiment"
SAMPLING_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


@pytest.fixture(scope="module")
def server_url(mlflow_server: str) -> str:
    yield mlflow_server  # the session's server: this module's experiments and model names are its own
    point_mlflow_back_at_the_session_store()


@pytest.fixture(scope="module")
def finetuned(ray_local, server_url, tiny_corpus: Path, tiny_model_dir: Path, tmp_path_factory):
    config = FinetuneConfig(
        data=ClassifierData(train=str(tiny_corpus / "train.parquet"), val=str(tiny_corpus / "val.parquet"),
                            test=str(tiny_corpus / "test.parquet"), max_length=64),
        model=ClassifierModel(name_or_path=str(tiny_model_dir)),
        optim=ClassifierOptim(epochs=1, max_steps=3, batch_size=8, lr=1e-3, log_every_steps=1),
        scaling=ScalingSettings(),  # two workers on one node: one node's metrics, from local rank 0
        run=RunSettings(storage_path=str(tmp_path_factory.mktemp("ray"))),
        tracking=TrackingConfig(tracking_uri=server_url, experiment="story-finetune", registered_model=REGISTERED),
        baselines=True,
    )
    previous = os.environ.get(SAMPLING_ENV)
    os.environ[SAMPLING_ENV] = "1"  # a seconds-long run: sample every second (the default is 10 s)
    try:
        return config, run_finetune(config)
    finally:
        if previous is None:
            os.environ.pop(SAMPLING_ENV)
        else:
            os.environ[SAMPLING_ENV] = previous


def test_training_run_lists_its_datasets_with_digests_and_contexts(finetuned, server_url, tiny_corpus: Path):
    _, outcome = finetuned
    run = mlflow.MlflowClient(server_url).get_run(outcome.run_id)
    logged = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs if i.tags}
    assert set(logged) == {"training", "validation", "test"}
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        expected = parquet_summary(str(tiny_corpus / f"{split}.parquet"))
        assert logged[context].digest == expected.digest, context
        assert logged[context].name == f"{split}.parquet" and str(tiny_corpus) in logged[context].source
        assert f'"num_rows": {expected.num_rows}' in logged[context].profile
        assert '"name": "text"' in logged[context].schema


def test_training_run_has_system_metrics_of_the_driver_and_the_node(finetuned, server_url):
    _, outcome = finetuned
    keys = set(mlflow.MlflowClient(server_url).get_run(outcome.run_id).data.metrics)
    assert "system/driver/cpu_utilization_percentage" in keys, sorted(keys)
    assert "system/driver/system_memory_usage_megabytes" in keys
    assert "system/node_0/cpu_utilization_percentage" in keys, sorted(keys)


def test_training_run_description_shows_the_model_beside_the_baselines(finetuned, server_url):
    _, outcome = finetuned
    description = mlflow.MlflowClient(server_url).get_run(outcome.run_id).data.tags["mlflow.note.content"]
    m = outcome.metrics
    assert "finetune_classifier" in description and f"{m['test_accuracy']:.4f}" in description
    assert "baseline: majority class" in description
    assert f"{m['baseline_char_ngram_test_accuracy']:.4f}" in description
    assert f"`{REGISTERED}` version {outcome.registered_version}" in description


def test_registered_version_has_signature_example_and_tags(finetuned, server_url, tiny_corpus: Path):
    _, outcome = finetuned
    mlflow.set_tracking_uri(server_url)
    info = mlflow.models.get_model_info(f"models:/{REGISTERED}/{outcome.registered_version}")
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == ["label", "label_name", "probability"]
    assert info.saved_input_example_info is not None
    version = mlflow.MlflowClient(server_url).get_model_version(REGISTERED, outcome.registered_version)
    tags = version.tags
    assert tags["data_digest_test"] == parquet_summary(str(tiny_corpus / "test.parquet")).digest
    assert tags["data_digest_training"] == parquet_summary(str(tiny_corpus / "train.parquet")).digest
    assert float(tags["test_accuracy"]) == pytest.approx(outcome.metrics["test_accuracy"], rel=1e-5)
    assert float(tags["baseline_char_ngram_test_accuracy"]) == pytest.approx(
        outcome.metrics["baseline_char_ngram_test_accuracy"], rel=1e-5)


def test_registry_pages_say_what_the_model_is(finetuned, server_url):
    """The version's description is its model card; the registered model has a paragraph of its own."""
    _, outcome = finetuned
    client = mlflow.MlflowClient(server_url)
    card = client.get_model_version(REGISTERED, outcome.registered_version).description
    m = outcome.metrics
    assert "text classifier" in card and "`negative`" in card and "`positive`" in card  # task and labels
    assert f"{m['test_accuracy']:.4f}" in card and f"{m['baseline_char_ngram_test_accuracy']:.4f}" in card
    assert "digest" in card and outcome.run_id in card
    assert f"--set model=models:/{REGISTERED}/{outcome.registered_version}" in card  # how to score with it
    assert "text classifier" in client.get_registered_model(REGISTERED).description


def test_experiments_open_in_the_model_training_view(finetuned, server_url):
    client = mlflow.MlflowClient(server_url)
    assert client.get_experiment_by_name("story-finetune").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # one created before (or by another tool) gets the tag when a job next uses it
    client.create_experiment("made-elsewhere")
    prepare_tracking(TrackingConfig(tracking_uri=server_url, experiment="made-elsewhere"))
    assert client.get_experiment_by_name("made-elsewhere").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_evaluating_on_the_test_split_shows_the_same_digest(finetuned, server_url, tiny_corpus: Path, tmp_path):
    from jobs.evaluation.runner import EvaluateConfig
    from jobs.evaluation.runner import run as run_evaluate

    _, trained = finetuned
    config = config_lib.load(EvaluateConfig, REPO / "configs/evaluate.local-cpu.yaml", [
        f"model=models:/{REGISTERED}@candidate", f"input.path={tiny_corpus / 'test.parquet'}",
        f"input.train_path={tiny_corpus / 'train.parquet'}",
        f"output_dir={tmp_path / 'evaluations'}", f"tracking.tracking_uri={server_url}",
        "tracking.experiment=story-evaluate", "predictor.concurrency=1"])
    outcome = run_evaluate(config)
    client = mlflow.MlflowClient(server_url)
    evaluated = {i.tags[0].value: i.dataset.digest for i in client.get_run(outcome.run_id).inputs.dataset_inputs}
    trained_on = {i.tags[0].value: i.dataset.digest for i in client.get_run(trained.run_id).inputs.dataset_inputs}
    # measured on the training run's test split, baselines fitted on its training split: the same digests
    assert evaluated == {"test": trained_on["test"], "training": trained_on["training"]}
    description = client.get_run(outcome.run_id).data.tags["mlflow.note.content"]
    assert f"version {trained.registered_version}" in description
    assert f"{outcome.metrics['accuracy']:.4f}" in description


def test_each_epoch_checkpoint_is_a_logged_model_with_its_metrics(finetuned, server_url):
    from mlflow.entities import LoggedModelStatus

    _, outcome = finetuned
    client = mlflow.MlflowClient(server_url)
    run = client.get_run(outcome.run_id)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{outcome.run_id}'")
    by_name = {m.name: m for m in models}
    assert set(by_name) == {"epoch-0", "model"}  # one epoch's checkpoint, and the registered export
    epoch = by_name["epoch-0"]
    assert epoch.tags["checkpoint"] == outcome.checkpoint_path and epoch.status == LoggedModelStatus.READY
    metrics = {m.key: m.value for m in epoch.metrics}
    assert metrics["val_accuracy"] == pytest.approx(run.data.metrics["val_accuracy"])
    assert metrics["test_accuracy"] == pytest.approx(outcome.metrics["test_accuracy"])
    assert "test_accuracy" in {m.key for m in by_name["model"].metrics}  # log_model(step=) of the final step
