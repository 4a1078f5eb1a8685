"""What the GPU tests share: the tiny fine-tuning config turned to GPUs, and checks of where a run trained."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/finetune_classifier.tiny.yaml"
REGISTERED = "gpu-tiny-sentiment"
EPOCHS = 2


def gpu_overrides(corpus: Path, model_dir: Path, storage: Path, name: str, gpus: int, **extra) -> list[str]:
    """The tiny config on ``gpus`` workers, one GPU each, NCCL, bf16 autocast."""
    overrides = [f"data.train={corpus / 'train.parquet'}", f"data.val={corpus / 'val.parquet'}",
                 f"data.test={corpus / 'test.parquet'}", f"model.name_or_path={model_dir}",
                 f"run.storage_path={storage}", f"run.name={name}", "run.audit_shards=true",
                 "scaling.use_gpu=true", f"scaling.num_workers={gpus}", "scaling.backend=nccl",
                 "scaling.cpus_per_worker=1", "scaling.torch_threads=2", "optim.precision=bf16",
                 f"optim.epochs={EPOCHS}", "optim.batch_size=8"]
    return overrides + [f"{k}={v}" for k, v in extra.items()]


def finetune(gpus: int, corpus: Path, model_dir: Path, storage: Path, name: str, **extra):
    from jobs.common.config import load
    from jobs.finetune_classifier import FinetuneConfig, run

    config = load(FinetuneConfig, TINY, gpu_overrides(corpus, model_dir, storage, name, gpus, **extra))
    return config, run(config)


def assert_trained_on_cuda(run, gpus: int, compiled: bool = False, precision: str = "bf16") -> None:
    """The tags the workers set from the device they really used (``jobs.train.loop.device_tags``)."""
    tags = run.data.tags
    assert tags["train_device"] == "cuda", tags.get("train_device")
    assert tags["train_device_name"] and tags["train_device_name"] != "cpu"
    assert tags["train_precision"] == precision
    assert tags["train_world_size"] == str(gpus)
    assert tags["train_compile"] == str(compiled).lower()
