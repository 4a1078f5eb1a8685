"""Process-group helpers for the training workers: sums over ranks, seeds, the unwrapped model."""

from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (the model itself when it is not wrapped)."""
    return model.module if hasattr(model, "module") else model


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
