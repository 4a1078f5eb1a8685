"""Batch scoring on GPUs for real: one ``num_gpus`` predictor actor per visible GPU, in bf16.

Scores the tiny corpus with the model the session's GPU fine-tuning registered (``finetuned_gpu``).
Skipped where CUDA is absent; the dry run (GPU_TESTS_ON_CPU=1) scores with one CPU actor in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

from gpu_jobs import CUDA_ONLY, REGISTERED, REPO  # noqa: E402

# bf16 keeps 8 bits of mantissa: a tiny model's class probabilities move by a few thousandths.
PROBABILITY_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def registered(finetuned_gpu):
    _, outcome = finetuned_gpu
    return f"models:/{REGISTERED}@candidate", outcome


def stage_overrides(target) -> list[str]:
    """One ``num_gpus`` actor per GPU in the target's precision; on the dry run's 2 cores every stage fits in 1.5 CPUs
    (the job refuses stages that cannot all run at once)."""
    if target.device == "cpu":
        return ["stages.read_cpus=0.25", "stages.tokenize_cpus=0.5", "stages.tokenize_concurrency=1",
                "predictor.concurrency=1", "predictor.num_gpus=0", "predictor.num_cpus=0.5", "predictor.precision=fp32"]
    return ["stages.read_cpus=0.5", "stages.tokenize_cpus=0.5", "stages.tokenize_concurrency=2",
            f"predictor.concurrency={target.gpus}", "predictor.num_gpus=1", "predictor.num_cpus=1",
            f"predictor.precision={target.precision}"]


def test_bf16_scoring_with_a_gpu_actor_per_gpu_keeps_every_row_and_agrees_with_fp32(
        registered, target, mlflow_uri, tiny_corpus, tmp_path):
    import mlflow
    import pyarrow.parquet as pq

    from jobs.scoring.batch import BatchInferConfig, run
    from jobs.common.config import load
    from model.classifier import classify_texts, load_classifier

    model_uri, trained = registered
    config = load(BatchInferConfig, REPO / "configs/batch_infer.cluster-gpu.yaml", [
        f"input={tiny_corpus / '*.parquet'}", f"output_dir={tmp_path / 'scores'}", f"model={model_uri}",
        "max_length=64", "stages.tokenize_batch_rows=32", "stages.min_blocks=4", *stage_overrides(target),
        "predictor.rows_per_call=64", "predictor.forward_batch_size=16", "chunk_rows=1000000",
        "tracking.experiment=gpu-batch-infer"])
    assert config.predictor.num_gpus == (1 if target.gpus else 0) and config.predictor.precision == target.precision
    outcome = run(config)

    ids, texts = [], []
    for split in ("train", "val", "test"):
        table = pq.read_table(tiny_corpus / f"{split}.parquet", columns=["id", "text"])
        ids += table.column("id").to_pylist()
        texts += table.column("text").to_pylist()
    # committed: the _SUCCESS manifest lists every row, the staging area is gone, the run finished
    manifest = json.loads((Path(outcome.output_path) / "_SUCCESS").read_text())
    assert manifest["rows_in"] == sum(f["rows"] for f in manifest["files"]) == len(ids)
    assert outcome.chunks_scored == 1
    assert not (tmp_path / "scores" / "_staging" / Path(outcome.output_path).name).exists()
    scored = pq.read_table(outcome.output_path).to_pandas().set_index("id")
    assert outcome.rows_in == outcome.rows_out == len(ids) == len(scored)
    assert sorted(scored.index) == sorted(ids)
    assert set(scored["model_version"]) == {trained.registered_version}
    run = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["rows_out"] == len(ids)

    # The same model in fp32 on the CPU, in this process: same labels and probabilities within bf16's rounding
    # (a label may flip only where fp32 itself is within the tolerance of a tie).
    labels, probs = classify_texts(load_classifier(trained.model_dir), texts, max_length=64)
    reference = dict(zip(ids, zip(labels, probs)))
    for row_id, row in scored.iterrows():
        label, prob = reference[row_id]
        if abs(prob - 0.5) > PROBABILITY_TOLERANCE:
            assert row["label"] == label, row_id
            assert row["probability"] == pytest.approx(prob, abs=PROBABILITY_TOLERANCE), row_id


def test_gpu_predictor_runs_on_cuda_in_bf16(registered, target, mlflow_uri):
    """What each ``num_gpus`` actor builds: the model on the actor's GPU, its weights in bf16."""
    import torch

    if target.device != "cuda":
        pytest.skip(CUDA_ONLY)

    from jobs.common.tracking import TrackingConfig, prepare_tracking
    from jobs.scoring.pipeline import ScoringModel
    from jobs.scoring.predictors import ClassifierPredictor, PredictorSettings

    model_uri, _ = registered
    model = ScoringModel.load(model_uri, prepare_tracking(TrackingConfig(tracking_uri=mlflow_uri)))
    predictor = ClassifierPredictor(model.resolved, model.tracking_uri,
                                    PredictorSettings(num_gpus=1, precision="bf16"), model.local_dir)
    assert predictor.device.type == "cuda"
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
