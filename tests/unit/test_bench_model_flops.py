"""bench.model_flops builds the seq2seq model of the local-cpu config and takes a training step on it."""

from __future__ import annotations

import torch

from bench.model_flops import seq2seq


def test_the_seq2seq_step_builds_the_configured_model_and_computes_gradients():
    model, forward_backward, _, description = seq2seq(2, 4)
    forward_backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert description == "batch 2, source and target 4 tokens"
