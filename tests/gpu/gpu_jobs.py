"""What the GPU tests share: where they run, the tiny fine-tuning config turned to it, checks of where a run trained."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/finetune_classifier.tiny.yaml"
REGISTERED = "gpu-tiny-sentiment"
EPOCHS = 2
# tools/gpu_check.sh's dry run: the same tests on CPU (2 workers over gloo, fp32), so that the offline kit
# is proven on the job stack before a GPU machine is at hand; the checks only CUDA can make skip, named.
ON_CPU = os.environ.get("GPU_TESTS_ON_CPU") == "1"
CUDA_ONLY = "the CPU dry run (GPU_TESTS_ON_CPU=1): a check only CUDA can make"


@dataclass(frozen=True)
class Target:
    """Where the tests train and score: every visible GPU, or the dry run's 2 CPU workers."""
    device: str  # cuda | cpu
    gpus: int  # visible GPUs; 0 on the dry run
    workers: int  # Ray Train workers (one per GPU)
    backend: str  # nccl | gloo
    precision: str  # bf16 on CUDA; CPUs stay fp32 (bf16 matmuls crawl there)

    @classmethod
    def detect(cls, gpus: int) -> Target:
        if ON_CPU:
            return cls(device="cpu", gpus=0, workers=2, backend="gloo", precision="fp32")
        return cls(device="cuda", gpus=gpus, workers=gpus, backend="nccl", precision="bf16")

    @property
    def scaling(self) -> list[str]:
        """Job overrides: one GPU per worker; on 2 CPU cores half a CPU each, or Ray Data's readers starve."""
        if self.device == "cpu":
            return [f"scaling.num_workers={self.workers}", "scaling.backend=gloo", "scaling.cpus_per_worker=0.5",
                    "scaling.torch_threads=1", "optim.precision=fp32"]
        return ["scaling.use_gpu=true", f"scaling.num_workers={self.workers}", "scaling.backend=nccl",
                "scaling.cpus_per_worker=1", "scaling.torch_threads=2", f"optim.precision={self.precision}"]


def gpu_overrides(target: Target, corpus: Path, model_dir: Path, storage: Path, name: str, **extra) -> list[str]:
    """The tiny config on the target's workers, with its backend and precision."""
    overrides = [f"data.train={corpus / 'train.parquet'}", f"data.val={corpus / 'val.parquet'}",
                 f"data.test={corpus / 'test.parquet'}", f"model.name_or_path={model_dir}",
                 f"run.storage_path={storage}", f"run.name={name}", "run.audit_shards=true", *target.scaling,
                 f"optim.epochs={EPOCHS}", "optim.batch_size=8"]
    return overrides + [f"{k}={v}" for k, v in extra.items()]


def finetune(target: Target, corpus: Path, model_dir: Path, storage: Path, name: str, **extra):
    from jobs.common.config import load
    from jobs.train.classifier import FinetuneConfig, run

    config = load(FinetuneConfig, TINY, gpu_overrides(target, corpus, model_dir, storage, name, **extra))
    return config, run(config)


def assert_trained_on(run, target: Target, compiled: bool = False, workers: int | None = None) -> None:
    """The tags the workers set from the device they really used (``jobs.train.loop.device_tags``)."""
    tags = run.data.tags
    assert tags["train_device"] == target.device, tags.get("train_device")
    assert tags["train_device_name"] and (tags["train_device_name"] != "cpu") == (target.device == "cuda")
    assert tags["train_precision"] == target.precision
    assert tags["train_world_size"] == str(workers or target.workers)
    assert tags["train_compile"] == str(compiled).lower()
