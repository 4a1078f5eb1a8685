"""Fine-tuning on GPUs for real: DDP over NCCL in bf16 on every visible GPU, compiled, and a resume on GPU.

The debug-size BERT and the tiny corpus of the CPU tests (``tests/conftest.py``); one Ray Train
worker per visible GPU, and two sharing one where there is one. Skipped where CUDA is absent
(``tests/gpu/conftest.py``); the dry run (GPU_TESTS_ON_CPU=1) trains on 2 CPU workers over gloo.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("ray")  # the job stack: a GPU machine without it reports the skip, not a collection error
pytest.importorskip("mlflow")

from gpu_jobs import CUDA_ONLY, EPOCHS, REGISTERED, assert_trained_on, finetune  # noqa: E402

# NCCL's words when two ranks of one communicator are given the same GPU
NCCL_SAME_GPU = ("Duplicate GPU detected", "ncclInvalidUsage")


def assert_one_model_on_every_rank(config, outcome, workers: int) -> None:
    """Every rank took the same steps and ended with the same weights (the backend all-reduced the gradients)."""
    audit = Path(config.run.storage_path) / outcome.run_name / "audit"
    finals = [json.loads((audit / f"final-rank{rank}.json").read_text()) for rank in range(workers)]
    assert len({f["parameter_digest"] for f in finals}) == 1 and len({f["step"] for f in finals}) == 1


def test_ddp_nccl_bf16_finetuning_on_every_gpu_trains_logs_and_registers(finetuned_gpu, target, mlflow_uri):
    import mlflow

    config, outcome = finetuned_gpu
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert_trained_on(run, target)
    assert run.data.params["scaling.backend"] == target.backend
    assert run.data.params["optim.precision"] == target.precision
    for key in ("train_loss", "train_samples_per_s", "val_loss", "val_accuracy", "test_accuracy", "test_loss"):
        assert key in run.data.metrics and math.isfinite(run.data.metrics[key]), key
    steps = [m.step for m in client.get_metric_history(outcome.run_id, "train_loss")]
    assert len(steps) == len(set(steps)) == outcome.metrics["step"] > 0
    assert len(client.get_metric_history(outcome.run_id, "val_accuracy")) == EPOCHS
    version = client.get_model_version_by_alias(REGISTERED, "candidate")
    assert version.run_id == outcome.run_id
    assert_one_model_on_every_rank(config, outcome, target.workers)


def test_two_workers_share_one_gpu_over_nccl_if_nccl_allows(ray_gpu, target, mlflow_uri, tiny_corpus,
                                                             tiny_model_dir, session_dir):
    """On a one-GPU machine the DDP test above has world size 1: here two workers take half the GPU each."""
    import mlflow

    if target.device != "cuda":
        pytest.skip(f"{CUDA_ONLY} (the other runs here are 2 workers already)")
    if target.gpus != 1:
        pytest.skip(f"{target.gpus} GPUs: the DDP test runs {target.workers} workers, one per GPU")
    shared = replace(target, workers=2)
    try:
        config, outcome = finetune(shared, tiny_corpus, tiny_model_dir, session_dir / "gpu-ray", "gpu-shared",
                                   **{"scaling.gpus_per_worker": 0.5, "run.max_failures": 0})
    except Exception as error:  # noqa: BLE001 -- Ray wraps the workers' NCCL error; anything else fails
        said = next((line.strip() for line in str(error).splitlines() if any(w in line for w in NCCL_SAME_GPU)),
                    None)
        if said is None:
            raise
        pytest.skip(f"NCCL refuses two ranks on one GPU: {said[:300]}")
    run = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert_trained_on(run, shared)
    assert_one_model_on_every_rank(config, outcome, 2)


def test_compiled_finetuning_on_gpu_matches_eager(finetuned_gpu, target, mlflow_uri, tiny_corpus, tiny_model_dir,
                                                  session_dir):
    import mlflow

    if target.device != "cuda":  # ~3 minutes of inductor on 2 cores, for nothing the kit carries
        pytest.skip(f"{CUDA_ONLY} (compiled on CPU: tests/integration/test_train_compile_job.py)")
    _, eager = finetuned_gpu
    _, compiled = finetune(target, tiny_corpus, tiny_model_dir, session_dir / "gpu-ray", "gpu-compiled",
                           **{"optim.compile": "true"})
    run = mlflow.MlflowClient(mlflow_uri).get_run(compiled.run_id)
    assert_trained_on(run, target, compiled=True)
    assert compiled.metrics["step"] == eager.metrics["step"]
    # Same data order, seed and weights; bf16 kernels that inductor fuses round differently from eager
    # ones, so the losses agree to a tolerance, not bit for bit.
    for key in ("val_loss", "test_loss"):
        assert compiled.metrics[key] == pytest.approx(eager.metrics[key], abs=0.05), key
    # the checkpoint keeps the model's own keys (no "_orig_mod." prefix): the export loads as a plain model
    from model.classifier import load_classifier

    assert load_classifier(compiled.model_dir).model is not None


def test_rerun_with_the_same_name_resumes_from_the_gpu_checkpoint(ray_gpu, target, mlflow_uri, tiny_corpus,
                                                                   tiny_model_dir, session_dir):
    """Two epochs, then the same ``run.name`` with three: the third epoch resumes from the epoch-1 checkpoint."""
    import mlflow

    storage = session_dir / "gpu-ray"
    _, first = finetune(target, tiny_corpus, tiny_model_dir, storage, "gpu-resume")
    _, resumed = finetune(target, tiny_corpus, tiny_model_dir, storage, "gpu-resume", **{"optim.epochs": 3})
    client = mlflow.MlflowClient(mlflow_uri)
    assert resumed.run_id == first.run_id, "the rerun continues the same MLflow run"
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    assert_trained_on(run, target)
    steps_per_epoch = int(first.metrics["step"]) // EPOCHS
    assert run.data.tags["restarts"] == "1"
    assert run.data.tags["resumed_from_steps"] == str(int(first.metrics["step"]))
    assert resumed.metrics["step"] == 3 * steps_per_epoch
    history = [m.step for m in client.get_metric_history(resumed.run_id, "train_loss")]
    assert len(history) == len(set(history)) == resumed.metrics["step"], "a step logged twice or lost"
    assert len(client.get_metric_history(resumed.run_id, "val_accuracy")) == 3
    assert len(list((storage / "gpu-resume").glob("epoch-0002-*/COMPLETE"))) == 1
