"""The training loop's pieces on tiny tensors, without Ray: schedules, parameter groups, gradient
accumulation, checkpoints and their fallback, callbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.train.callbacks import ShardAudit, parameter_digest
from jobs.train.checkpoint import (COMPLETE_MARKER, Progress, checkpoint_dir_name, load_latest_valid_state,
                                   load_state, restore, save_checkpoint)
from jobs.train.loop import Counters, micro_batch_groups, optimizer_step
from jobs.train.optimizer import build_optimizer, lr_lambda, parameter_groups, total_optimizer_steps
from jobs.train.settings import OptimSettings

CPU = torch.device("cpu")


# ---------------------------------------------------------------- learning-rate schedules

def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = lr_lambda("linear", warmup_steps=4, total_steps=14)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(9) == pytest.approx(0.5) and factor(14) == 0.0
    assert factor(100) == 0.0  # never negative past the end


def test_cosine_inverse_sqrt_and_constant_schedules():
    cosine = lr_lambda("cosine", warmup_steps=0, total_steps=10)
    assert cosine(0) == pytest.approx(1.0) and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    inverse_sqrt = lr_lambda("inverse_sqrt", warmup_steps=4, total_steps=100)
    assert inverse_sqrt(3) == 1.0 and inverse_sqrt(15) == pytest.approx(0.5)  # sqrt(4 / 16)
    constant = lr_lambda("constant", warmup_steps=2, total_steps=10)
    assert [constant(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_scheduler_from_build_optimizer_follows_warmup_ratio():
    model = torch.nn.Linear(3, 2)
    optim = OptimSettings(lr=0.1, warmup_ratio=0.2, schedule="linear")
    optimizer, scheduler = build_optimizer(model, optim, total_steps=10)  # 2 warm-up steps
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert rates[-1] == pytest.approx(0.1 * 1 / 8)


# ---------------------------------------------------------------- parameter groups

def test_norms_and_biases_are_not_decayed():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "1.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["1.bias", "2.bias", "2.weight"]
    optimizer, _ = build_optimizer(model, OptimSettings(weight_decay=0.01), total_steps=1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


def test_frozen_parameters_are_left_out():
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["params"] == [model.weight] and no_decay["params"] == []


# ---------------------------------------------------------------- gradient accumulation

class RegressionTask:
    """Mean squared error of a linear model: a task with a per-row mean loss."""

    def train_loss(self, model, batch):
        prediction = model(batch["x"]).squeeze(-1)
        return torch.nn.functional.mse_loss(prediction, batch["y"]), len(batch["y"]), torch.tensor(len(batch["y"]))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 1)


def _batches(count: int, rows: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(rows, 5, generator=generator), "y": torch.randn(rows, generator=generator)}
            for _ in range(count)]


def _sgd(model):
    # Plain SGD: its update is proportional to the gradient, so a wrongly scaled accumulation shows
    # (AdamW's first step is ~lr * sign(gradient) and would hide it).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _concat(batches):
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def _step(model, group, optim):
    optimizer, scheduler = _sgd(model)
    return optimizer_step(model, RegressionTask(), group, optimizer, scheduler, None, optim, CPU)


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_k_micro_batches_give_the_update_of_one_batch_of_k_times_the_rows(grad_clip):
    optim = OptimSettings(grad_clip=grad_clip, grad_accum_steps=4)
    micro = _batches(4, rows=8)
    accumulated, whole = _model(), _model()
    result = _step(accumulated, micro, optim)
    _step(whole, [_concat(micro)], optim)
    for a, b in zip(accumulated.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert result.micro_batches == 4 and result.samples == 32 and int(result.tokens) == 32
    assert not torch.equal(accumulated.weight, _model().weight)  # it did move


def test_a_trailing_partial_group_is_applied_as_its_own_mean():
    optim = OptimSettings(grad_clip=0.0, grad_accum_steps=2)
    micro = _batches(3, rows=4)
    groups = list(micro_batch_groups(iter(micro), optim.grad_accum_steps))
    assert [len(g) for g in groups] == [2, 1]
    accumulated, reference = _model(), _model()
    optimizer, scheduler = _sgd(accumulated)
    for group in groups:
        optimizer_step(accumulated, RegressionTask(), group, optimizer, scheduler, None, optim, CPU)
    assert scheduler.last_epoch == 2  # two optimiser steps, the schedule advanced twice
    _step(reference, [_concat(micro[:2])], optim)
    _step(reference, [micro[2]], optim)  # the last micro-batch alone, at full weight
    for a, b in zip(accumulated.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_the_schedule_counts_the_steps_the_loop_takes():
    # 10 micro-batches per epoch in groups of 4: steps of 4, 4 and 2 micro-batches.
    assert total_optimizer_steps(OptimSettings(epochs=3, grad_accum_steps=4), 10) == 9
    assert len(list(micro_batch_groups(range(10), 4))) == 3
    assert total_optimizer_steps(OptimSettings(epochs=3, grad_accum_steps=4, max_steps=5), 10) == 5
    assert total_optimizer_steps(OptimSettings(epochs=2), 7) == 14


def test_counters_sum_on_the_device_and_report_totals():
    counters = Counters(CPU)
    for _ in range(3):
        counters.add(_step(_model(), _batches(2, rows=3), OptimSettings(grad_accum_steps=2)))
    totals, seconds = counters.totals()
    assert totals["micro"] == 6 and totals["samples"] == 18 and totals["tokens"] == 18
    assert totals["loss"] > 0 and seconds >= 0
    assert all(value.device == CPU for value in counters.sums.values())


# ---------------------------------------------------------------- checkpoints

def _trained_state():
    model = _model()
    optimizer, scheduler = build_optimizer(model, OptimSettings(lr=0.01), total_steps=10)
    for batch in _batches(3, rows=4):
        optimizer_step(model, RegressionTask(), [batch], optimizer, scheduler, None, OptimSettings(), CPU)
    return model, optimizer, scheduler


def _export(model, directory: Path) -> None:
    directory.mkdir()
    (directory / "weights.txt").write_text(str(float(model.weight.detach().sum())))


def test_checkpoint_save_then_restore_gives_the_same_state(tmp_path: Path):
    model, optimizer, scheduler = _trained_state()
    progress = Progress(step=3, next_epoch=1, best=0.25, stale_epochs=1)
    torch.manual_seed(123)
    save_checkpoint(tmp_path, model, optimizer, scheduler, None, progress, epoch=1, config_dict={"optim": {"lr": 0.01}},
                    export=_export)
    expected_draw = torch.rand(3)  # the RNG stream right after the save
    assert json.loads((tmp_path / COMPLETE_MARKER).read_text()) == {"step": 3, "epoch": 1}
    assert (tmp_path / "model" / "weights.txt").is_file() and (tmp_path / "job_config.json").is_file()

    fresh = _model(seed=9)
    fresh_optimizer, fresh_scheduler = build_optimizer(fresh, OptimSettings(lr=0.01), total_steps=10)
    restored = restore(load_state(tmp_path, CPU), fresh, fresh_optimizer, fresh_scheduler, None)
    assert restored == Progress(step=3, next_epoch=2, best=0.25, stale_epochs=1)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for key, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][key][name]))
    assert torch.equal(torch.rand(3), expected_draw)


def test_a_checkpoint_without_its_marker_is_not_loaded(tmp_path: Path):
    model, optimizer, scheduler = _trained_state()
    save_checkpoint(tmp_path, model, optimizer, scheduler, None, Progress(step=3), 0, {}, _export)
    (tmp_path / COMPLETE_MARKER).unlink()
    assert load_state(tmp_path, CPU) is None


def test_resume_falls_back_past_a_half_written_checkpoint(tmp_path: Path):
    import ray.train

    model, optimizer, scheduler = _trained_state()
    earlier = tmp_path / checkpoint_dir_name(epoch=0, step=3)
    latest = tmp_path / checkpoint_dir_name(epoch=1, step=6)
    for directory, step in ((earlier, 3), (latest, 6)):
        directory.mkdir()
        save_checkpoint(directory, model, optimizer, scheduler, None, Progress(step=step), step // 3 - 1, {}, _export)
    (latest / COMPLETE_MARKER).unlink()  # killed while writing the newest one

    state = load_latest_valid_state(ray.train.Checkpoint(str(latest)), CPU)
    assert state is not None and state["step"] == 3 and state["epoch"] == 0
    (earlier / COMPLETE_MARKER).unlink()
    assert load_latest_valid_state(ray.train.Checkpoint(str(latest)), CPU) is None


# ---------------------------------------------------------------- callbacks

def test_shard_audit_records_each_epochs_ids_and_the_final_digest(tmp_path: Path):
    audit = ShardAudit(str(tmp_path), rank=1)
    batches = [{"ids": ["a", "b"]}, {"ids": ["c"]}]
    assert list(audit.wrap_batches(0, batches)) == batches
    audit.after_epoch(0)
    list(audit.wrap_batches(1, [{"ids": ["d"]}]))
    audit.after_epoch(1)
    audit.after_training(_model(), step=4)
    assert json.loads((tmp_path / "epoch0-rank1.json").read_text()) == {"ids": ["a", "b", "c"]}
    assert json.loads((tmp_path / "epoch1-rank1.json").read_text()) == {"ids": ["d"]}
    final = json.loads((tmp_path / "final-rank1.json").read_text())
    assert final["step"] == 4 and final["parameter_digest"] == parameter_digest(_model())
    assert final["parameter_digest"] != parameter_digest(_model(seed=1))


# ---------------------------------------------------------------- elastic groups keep the global batch

def test_a_smaller_elastic_group_accumulates_to_the_planned_global_batch():
    from jobs.train.loop import accumulation_for

    assert accumulation_for(grad_accum_steps=1, planned_workers=4, workers=4) == 1
    assert accumulation_for(grad_accum_steps=1, planned_workers=4, workers=2) == 2
    assert accumulation_for(grad_accum_steps=3, planned_workers=4, workers=1) == 12
    assert accumulation_for(grad_accum_steps=2, planned_workers=3, workers=2) == 3  # 2 x 1.5, approximately kept
    assert accumulation_for(grad_accum_steps=2, planned_workers=2, workers=3) == 2  # never fewer than planned


def test_elastic_scaling_settings_are_checked_where_they_are_read():
    from jobs.train.classifier import ClassifierData, FinetuneConfig
    from jobs.train.settings import RunSettings, ScalingSettings

    assert ScalingSettings(num_workers=2).ray_num_workers == 2
    assert ScalingSettings(num_workers=3, min_workers=1).ray_num_workers == (1, 3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="min_workers"):
            ScalingSettings(num_workers=3, min_workers=bad)
    data = ClassifierData(train="t.parquet", val="v.parquet", test="s.parquet")
    with pytest.raises(ValueError, match="run.max_failures >= 1"):  # a resize is a restart
        FinetuneConfig(data=data, scaling=ScalingSettings(num_workers=2, min_workers=1),
                       run=RunSettings(max_failures=0))
