"""``optim.compile`` inside the real job: two Ray Train workers (DDP over gloo) train a compiled model on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import torch

from jobs.common.config import load
from jobs.train.classifier import FinetuneConfig
from jobs.train.classifier import run as run_finetune
from jobs.train.checkpoint import STATE_FILE

REPO = Path(__file__).resolve().parents[2]


def test_compiled_ddp_finetuning_trains_and_checkpoints_plain_keys(ray_local, mlflow_uri, tiny_corpus,
                                                                    tiny_model_dir, session_dir):
    storage = session_dir / "compile-ray"
    config = load(FinetuneConfig, REPO / "configs/finetune_classifier.tiny.yaml", [
        f"data.train={tiny_corpus / 'train.parquet'}", f"data.val={tiny_corpus / 'val.parquet'}",
        f"data.test={tiny_corpus / 'test.parquet'}", f"model.name_or_path={tiny_model_dir}",
        f"run.storage_path={storage}", "run.name=compiled", "run.audit_shards=true", "optim.compile=true",
        "optim.epochs=1"])
    outcome = run_finetune(config)

    run = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["train_compile"] == "true" and run.data.tags["train_device"] == "cpu"
    assert run.data.tags["train_world_size"] == "2"
    assert torch.isfinite(torch.tensor(outcome.metrics["test_loss"]))
    audit = storage / "compiled" / "audit"
    finals = [json.loads((audit / f"final-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert finals[0]["parameter_digest"] == finals[1]["parameter_digest"]  # DDP kept the compiled replicas equal
    checkpoint = sorted(storage.glob("compiled/epoch-*"))[-1]
    keys = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)["model"].keys()
    assert keys and not any("_orig_mod" in key or key.startswith("module.") for key in keys)
