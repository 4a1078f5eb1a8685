"""The GPU test set: every test in this folder is marked ``gpu`` and skipped where CUDA is absent.

    pytest -m gpu tests/gpu                      # on a machine with NVIDIA GPUs (tools/gpu_check.sh runs it)
    GPU_TESTS_ON_CPU=1 pytest -m gpu tests/gpu   # the dry run: 2 CPU workers over gloo, fp32

Elsewhere (CI, the 2-core machines) the tests are collected and skipped before any fixture runs,
so the default suite pays nothing for them. They use the real job stack (Ray Train with NCCL,
Ray Data actors with ``num_gpus``, MLflow) on every visible GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NO_CUDA_REASON = "CUDA is not available (the GPU test set runs with `pytest -m gpu` on a GPU machine)"


def cuda_devices() -> int:
    """Visible CUDA devices; 0 where torch has no CUDA build or no device answers."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(config, items):
    from gpu_jobs import ON_CPU

    skip = pytest.mark.skip(reason=NO_CUDA_REASON) if cuda_devices() == 0 and not ON_CPU else None
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if skip is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def target():
    """Every visible GPU, or the dry run's CPU workers (``gpu_jobs.Target``)."""
    from gpu_jobs import Target

    return Target.detect(cuda_devices())


@pytest.fixture(scope="session")
def ray_gpu(target):
    """A local Ray that offers every visible GPU (and the machine's cores, up to 16)."""
    import ray

    if not ray.is_initialized():
        from jobs.common.ray_runtime import start_local_ray

        start_local_ray(num_cpus=min(os.cpu_count() or 2, 16), num_gpus=target.gpus)
    offered = int(ray.cluster_resources().get("GPU", 0))
    if offered < target.gpus:
        pytest.skip(f"the running Ray offers {offered} GPU(s) of the {target.gpus} visible (started without them)")
    yield ray


@pytest.fixture(scope="session")
def finetuned_gpu(ray_gpu, target, mlflow_uri, tiny_corpus, tiny_model_dir, session_dir):
    """One DDP fine-tuning on every GPU, registered as ``gpu-tiny-sentiment@candidate`` (training and scoring tests)."""
    from gpu_jobs import REGISTERED, finetune

    return finetune(target, tiny_corpus, tiny_model_dir, session_dir / "gpu-ray", "gpu-ddp",
                    **{"tracking.registered_model": REGISTERED, "tracking.alias": "candidate"})
