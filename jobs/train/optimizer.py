"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from jobs.train.settings import OptimSettings


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """The factor on the base learning rate at each optimiser step (``LambdaLR``)."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "inverse_sqrt":
            return math.sqrt(max(warmup_steps, 1) / max(step + 1, 1))
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear decay to zero
    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay; biases and norm weights (fewer than 2 dims) do not (BERT/Transformer practice)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, optim: OptimSettings, total_steps: int):
    groups = parameter_groups(model, optim.weight_decay)
    params = [p for group in groups for p in group["params"]]
    # The fused kernel (CPU and CUDA) steps MiniRBT-H256's AdamW in 8 ms against 47 ms for the
    # default for-each one on one CPU thread: ~4% of a training step (BENCHMARKS.md, question 2).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, fused=fused or None)
    warmup = int(optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim.schedule, warmup, total_steps))
    return optimizer, scheduler


def steps_per_epoch(micro_batches_per_epoch: int, grad_accum_steps: int) -> int:
    """Optimiser steps in an epoch: every full group of micro-batches, plus the trailing partial one."""
    return math.ceil(micro_batches_per_epoch / grad_accum_steps)


def total_optimizer_steps(optim: OptimSettings, micro_batches_per_epoch: int) -> int:
    total = optim.epochs * steps_per_epoch(micro_batches_per_epoch, optim.grad_accum_steps)
    return min(total, optim.max_steps) if optim.max_steps else total
