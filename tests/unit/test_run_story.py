"""Experiments open in the model-training view; descriptions and version tags put the model beside its baselines."""

import mlflow

from jobs.common.datasets import DatasetSummary
from jobs.common.tracking import (EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, TrackingConfig, metrics_table,
                                  prepare_tracking)
from jobs.common.registry import RegisteredModel, describe_version
from jobs.train.run_record import baselines_by_name, model_card, version_tags


def test_created_and_existing_experiments_get_the_model_training_kind(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    target = prepare_tracking(TrackingConfig(tracking_uri=uri, experiment="new"))
    assert client.get_experiment(target.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    older = client.create_experiment("older")  # made before this tag existed, or by another tool
    assert prepare_tracking(TrackingConfig(tracking_uri=uri, experiment="older")).experiment_id == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    client.set_experiment_tag(older, EXPERIMENT_KIND_TAG, "genai_development")  # a user's choice stays
    prepare_tracking(TrackingConfig(tracking_uri=uri, experiment="older"))
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_baselines_grouped_by_name_and_tabled_beside_the_model():
    baselines = {"baseline_majority_test_accuracy": 0.5, "baseline_char_ngram_test_accuracy": 0.8,
                 "baseline_char_ngram_test_macro_f1": 0.79, "baseline_char_test_exact_match": 0.3}
    grouped = baselines_by_name(baselines)
    assert grouped == {"majority": {"accuracy": 0.5}, "char_ngram": {"accuracy": 0.8, "macro_f1": 0.79},
                       "char": {"exact_match": 0.3}}
    table = metrics_table({"model": {"accuracy": 0.81234, "macro_f1": 0.8}, "majority": grouped["majority"]},
                          ["accuracy", "macro_f1"])
    assert table.splitlines() == ["| | accuracy | macro_f1 |", "|---|---:|---:|", "| model | 0.8123 | 0.8000 |",
                                  "| majority | 0.5000 |  |"]


def test_version_tags_carry_digests_metrics_and_baselines():
    summary = DatasetSummary(source="/d/test.parquet", name="test.parquet", digest="abc", num_rows=3, num_files=1,
                             num_bytes=10, schema=())
    tags = version_tags([(summary, "test")], {"test_accuracy": 0.8123456789}, {"baseline_majority_test_accuracy": 0.5})
    assert tags == {"data_digest_test": "abc", "test_accuracy": "0.812346", "baseline_majority_test_accuracy": "0.5"}


def test_model_card_describes_the_version_and_a_users_model_paragraph_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    versions = [client.create_model_version("m", "file:///nowhere", run_id=None) for _ in range(2)]
    first = RegisteredModel("m", versions[0].version, None, "models:/m/1")
    card = model_card("What it is.", "Test split table.", "run123", "s3://b/ckpt", first)
    assert card.startswith("What it is.") and "run123" in card and "--set model=models:/m/1" in card
    describe_version(client, first, card, "What it is.")
    assert client.get_model_version("m", "1").description == card
    assert client.get_registered_model("m").description == "What it is."
    client.update_registered_model("m", description="Written by a person in the UI.")
    describe_version(client, RegisteredModel("m", versions[1].version, None, "models:/m/2"), "card 2", "What it is.")
    assert client.get_model_version("m", "2").description == "card 2"
    assert client.get_registered_model("m").description == "Written by a person in the UI."


def test_what_it_is_names_the_source_model_and_labels():
    from types import SimpleNamespace

    from jobs.train.run_record import what_it_is

    plan = SimpleNamespace(job="finetune_classifier", dicts={"labels.json": {"label_names": ["neg", "pos"]}},
                           tags={"model_source": "hfl/minirbt-h256"})
    assert what_it_is(plan) == ("A text classifier: a pretrained encoder (`hfl/minirbt-h256`) fine-tuned to predict "
                                "one of 2 labels (`neg`, `pos`) for a text, with each label's probability.")
    assert "from scratch" in what_it_is(SimpleNamespace(job="train_seq2seq", dicts={}, tags={}))
    assert what_it_is(SimpleNamespace(job="some_new_job", dicts={}, tags={})) == ""
