"""Process-group helpers for the training workers: sums over ranks, seeds, the unwrapped model."""

from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP and ``torch.compile`` wrappers (the model itself when it is not wrapped).

    Its ``state_dict`` has the model's own keys: no ``module.`` nor ``_orig_mod.`` prefix.
    """
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile(model) returns such a wrapper
        if inner is None and hasattr(model, "module"):  # DistributedDataParallel
            inner = model.module
        if inner is None:
            return model
        model = inner


def compile_in_place(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile`` a module's forward in place (``nn.Module.compile``), before DDP wraps it.

    PyTorch's advice for DDP is to compile the inner module and wrap that; compiled in place, the
    module keeps its class, parameters and ``state_dict`` keys, so checkpoints and exports (and
    resuming an eager run's checkpoint with compile on, or the other way round) are unchanged.
    """
    model.compile(backend=backend)
    return model


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(values: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Sum tensors over workers (a no-op for one process); keys are reduced in sorted order."""
    if not is_distributed():
        return {key: value.detach().cpu() for key, value in values.items()}
    keys = sorted(values)
    flat = torch.cat([values[k].detach().double().reshape(-1).to(device) for k in keys])
    torch.distributed.all_reduce(flat)
    out, offset = {}, 0
    for key in keys:
        n = values[key].numel()
        out[key] = flat[offset:offset + n].reshape(values[key].shape).cpu()
        offset += n
    return out


def gather_objects(value):
    """Every worker's ``value`` (picklable), in rank order; a collective every rank calls. One process: [value]."""
    if not is_distributed():
        return [value]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    # Dropout differs between ranks and epochs but is reproducible, with or without a restart.
    return (seed * 1_000_003 + rank * 10_007 + epoch) % 2**63
