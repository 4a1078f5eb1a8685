"""End to end on a real local Ray and a real MLflow store: DDP fine-tuning, registry, batch scoring.

One two-worker training run (debug-size BERT, tiny slice of the real corpus) serves several
assertions, since starting a Ray Train worker group costs ~20 s on two cores.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from jobs.scoring.batch import BatchInferConfig, BatchInput
from jobs.scoring.batch import run as run_scoring
from data_pipeline.ray_stages import StageResources
from jobs.train.classifier import ClassifierData, ClassifierModel, ClassifierOptim, FinetuneConfig
from jobs.train.classifier import run as run_finetune
from jobs.common.config import ConfigError
from jobs.common.tracking import TrackingConfig
from jobs.train.settings import RunSettings, ScalingSettings

REGISTERED = "tiny-sentiment"
EPOCHS = 2


@pytest.fixture(scope="module")
def finetuned(ray_local, mlflow_uri, tiny_corpus: Path, tiny_model_dir: Path, session_dir: Path):
    config = FinetuneConfig(
        data=ClassifierData(train=str(tiny_corpus / "train.parquet"), val=str(tiny_corpus / "val.parquet"),
                            test=str(tiny_corpus / "test.parquet"), max_length=64),
        model=ClassifierModel(name_or_path=str(tiny_model_dir)),
        optim=ClassifierOptim(epochs=EPOCHS, batch_size=8, lr=1e-3, log_every_steps=1, length_grouping=2),
        # Default sizing (2 workers x 0.5 CPU, 0.25-CPU read and tokenize stages) on the 2-CPU Ray:
        # the run finishing at all shows the local defaults do not wait on themselves.
        scaling=ScalingSettings(),
        run=RunSettings(storage_path=str(session_dir / "ray"), audit_shards=True),
        tracking=TrackingConfig(experiment="test-finetune", registered_model=REGISTERED),
        baselines=True,
    )
    return config, run_finetune(config)


def _audit(outcome, config, name: str, rank: int) -> dict:
    path = Path(config.run.storage_path) / outcome.run_name / "audit" / f"{name}-rank{rank}.json"
    return json.loads(path.read_text())


def test_two_workers_see_disjoint_shards_and_end_identical(finetuned, tiny_corpus: Path):
    config, outcome = finetuned
    train_ids = set(pq.read_table(tiny_corpus / "train.parquet").column("id").to_pylist())
    for epoch in range(EPOCHS):
        rank0 = _audit(outcome, config, f"epoch{epoch}", 0)["ids"]
        rank1 = _audit(outcome, config, f"epoch{epoch}", 1)["ids"]
        assert rank0 and rank1
        assert len(rank0) == len(set(rank0)) and len(rank1) == len(set(rank1)), "a row was seen twice in an epoch"
        assert not set(rank0) & set(rank1), "the two workers share rows"
        assert set(rank0) | set(rank1) <= train_ids
        # equal shards may drop at most world_size - 1 rows per epoch, never more
        assert len(train_ids) - (len(rank0) + len(rank1)) <= 1
        assert len(rank0) == len(rank1)
    final0, final1 = _audit(outcome, config, "final", 0), _audit(outcome, config, "final", 1)
    assert final0["parameter_digest"] == final1["parameter_digest"]
    assert final0["step"] == final1["step"] > 0


def test_mlflow_run_holds_params_metrics_tags_and_registered_alias(finetuned, mlflow_uri):
    config, outcome = finetuned
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.001" and params["scaling.num_workers"] == "2"
    assert int(params["rows_train"]) == 96
    for key in ("test_accuracy", "test_macro_f1", "val_accuracy", "val_loss", "train_samples_per_s",
                "train_tokens_per_s", "baseline_majority_test_accuracy", "baseline_char_ngram_test_accuracy"):
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    for tag in ("git_commit", "ray_version", "torch_version", "transformers_version", "num_workers"):
        assert run.data.tags.get(tag), tag
    # per-step loss and learning rate, each step logged exactly once
    history = client.get_metric_history(outcome.run_id, "train_loss")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)) == outcome.metrics["step"]
    assert len(client.get_metric_history(outcome.run_id, "learning_rate")) == len(steps)
    assert [m.step for m in client.get_metric_history(outcome.run_id, "val_accuracy")] == sorted(
        {m.step for m in client.get_metric_history(outcome.run_id, "val_accuracy")})
    assert len(client.get_metric_history(outcome.run_id, "val_accuracy")) == EPOCHS
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert version.run_id == outcome.run_id and str(version.version) == outcome.registered_version


def test_registered_model_loads_back_and_predicts(finetuned):
    model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@candidate")
    import pandas as pd

    out = model.predict(pd.DataFrame({"text": ["质量很好，物流也快", "太差了，再也不买"]}))
    assert list(out.columns) == ["label", "label_name", "probability"]
    assert set(out["label_name"]) <= {"negative", "positive"}
    assert ((out["probability"] >= 0.5) & (out["probability"] <= 1.0)).all()


def test_batch_scoring_keeps_every_row_with_lineage(finetuned, tiny_corpus: Path, session_dir: Path):
    _, trained = finetuned
    config = BatchInferConfig(input=BatchInput(path=str(tiny_corpus / "*.parquet")),
                              output_dir=str(session_dir / "scores"), model=f"models:/{REGISTERED}@candidate",
                              max_length=64,
                              stages=StageResources(min_blocks=2),
                              tracking=TrackingConfig(experiment="test-batch-infer"))
    outcome = run_scoring(config)
    scored = pq.read_table(outcome.output_path)
    input_ids = []
    for split in ("train", "val", "test"):
        input_ids += pq.read_table(tiny_corpus / f"{split}.parquet").column("id").to_pylist()
    assert outcome.rows_in == outcome.rows_out == len(input_ids) == scored.num_rows
    assert sorted(scored.column("id").to_pylist()) == sorted(input_ids)
    assert set(scored.column("label").to_pylist()) <= {0, 1}
    assert set(scored.column("label_name").to_pylist()) <= {"negative", "positive"}
    assert set(scored.column("model_name").to_pylist()) == {REGISTERED}
    assert set(scored.column("model_version").to_pylist()) == {trained.registered_version}
    assert set(scored.column("model_run_id").to_pylist()) == {trained.run_id}
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert run.data.metrics["rows_in"] == run.data.metrics["rows_out"] == len(input_ids)
    assert run.data.params["model_version"] == trained.registered_version


def test_a_deterministic_run_whose_workers_leave_no_whole_cpu_is_refused_before_training(finetuned):
    """Ray Data cuts deterministic shards with 1-CPU tasks beside the placed workers: 2 x 0.75 of 2 CPUs
    would wait for them forever; the job says so instead (exit 2), naming the way out."""
    config, _ = finetuned
    squeezed = replace(config, scaling=ScalingSettings(num_workers=2, cpus_per_worker=0.75),
                       run=replace(config.run, deterministic=True),
                       tracking=replace(config.tracking, registered_model=None))
    with pytest.raises(ConfigError, match=r"deterministic shard split task 1.*run\.deterministic=false"):
        run_finetune(squeezed)


def test_a_job_on_its_own_local_ray_starts_none_of_what_one_machine_does_not_use(finetuned):
    """ray_runtime's local settings reach the run: no preemption watcher actor, no metrics export, and a
    Train controller that polls its workers every 0.5 s (its process's environment, from the raylet's)."""
    import psutil
    import ray
    from ray._private import state

    started = {actor["ActorClassName"] for actor in state.actors().values()}
    assert "TrainController" in started  # the listing holds this session's training runs
    assert "PreemptionWatcher" not in started, sorted(started)
    assert ray._private.worker._global_node._config.get("enable_metrics_collection") is False
    raylets = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("raylet")]
    assert raylets, "the session's Ray has no raylet under this process"
    assert {p.environ().get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") for p in raylets} == {"0.5"}
