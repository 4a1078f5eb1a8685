"""The autocast context a ``precision`` setting names, shared by the training loop and the scoring actors."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)

