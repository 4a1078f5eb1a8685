"""``optim.compile``: the compiled training step matches the eager one, and checkpoints keep plain keys."""

from __future__ import annotations

import torch

from jobs.common import config as config_lib
from jobs.train.classifier import FinetuneConfig
from jobs.train.checkpoint import Progress, load_state, restore, save_checkpoint
from jobs.train.distributed import compile_in_place, unwrap
from jobs.train.loop import optimizer_step
from jobs.train.optimizer import build_optimizer
from jobs.train.settings import OptimSettings
from jobs.train.seq2seq import Seq2SeqTrainConfig

CPU = torch.device("cpu")
TOLERANCE = 1e-5  # inductor fuses and reorders float32 arithmetic: equal up to rounding, not bit for bit


class RegressionTask:
    def train_loss(self, model, batch):
        prediction = model(batch["x"]).squeeze(-1)
        return torch.nn.functional.mse_loss(prediction, batch["y"]), len(batch["y"]), torch.tensor(len(batch["y"]))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
                               torch.nn.Linear(16, 1))


def train(model: torch.nn.Module, steps: int = 3) -> tuple[list[float], torch.nn.Module, tuple]:
    optim = OptimSettings(lr=0.05, warmup_ratio=0.0, grad_accum_steps=2)
    optimizer, scheduler = build_optimizer(model, optim, total_steps=steps)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        group = [{"x": torch.randn(6, 8, generator=generator), "y": torch.randn(6, generator=generator)}
                 for _ in range(optim.grad_accum_steps)]
        result = optimizer_step(model, RegressionTask(), group, optimizer, scheduler, None, optim, CPU)
        losses.append(float(result.loss_sum) / result.micro_batches)
    return losses, model, (optimizer, scheduler)


def test_compile_is_off_by_default_and_a_setting_of_both_training_jobs():
    assert OptimSettings().compile is False
    for job, path in ((FinetuneConfig, "configs/finetune_classifier.tiny.yaml"),
                      (Seq2SeqTrainConfig, "configs/train_seq2seq.tiny.yaml")):
        config = config_lib.load(job, path, ["optim.compile=true"])
        assert config.optim.compile is True


def test_compiled_training_steps_give_the_eager_losses_and_weights():
    eager_losses, eager, _ = train(tiny_model())
    compiled_losses, compiled, _ = train(compile_in_place(tiny_model()))
    assert compiled._compiled_call_impl is not None  # the forward really went through torch.compile
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=0, atol=TOLERANCE)
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=0, atol=TOLERANCE, msg=name)


def test_checkpoint_of_a_compiled_model_has_the_model_keys_and_loads_into_an_eager_one(tmp_path):
    plain_keys = set(tiny_model().state_dict())
    in_place = tiny_model()
    in_place.compile(backend="eager")  # what compile_in_place does; the eager backend spares inductor's build
    for wrapped in (in_place, torch.compile(tiny_model(), backend="eager")):  # in place, and the wrapper
        _, model, (optimizer, scheduler) = train(wrapped, steps=1)
        assert set(unwrap(model).state_dict()) == plain_keys
        directory = tmp_path / type(model).__name__
        directory.mkdir()
        save_checkpoint(directory, model, optimizer, scheduler, None, Progress(step=1), 0, {}, lambda m, d: None)
        state = load_state(directory, CPU)
        assert set(state["model"]) == plain_keys  # no "_orig_mod." prefix
        eager = tiny_model()
        optimizer2, scheduler2 = build_optimizer(eager, OptimSettings(lr=0.05), total_steps=1)
        restore(state, eager, optimizer2, scheduler2, None)
        for key, value in unwrap(model).state_dict().items():
            torch.testing.assert_close(eager.state_dict()[key], value)


def test_unwrap_sees_through_ddp_and_compile_wrappers():
    model = tiny_model()
    assert unwrap(model) is model
    assert unwrap(torch.compile(model)) is model

    class FakeDDP(torch.nn.Module):  # the attribute DDP exposes, without a process group
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(FakeDDP(model)) is model
    assert unwrap(torch.compile(FakeDDP(model))) is model


def test_the_run_records_the_device_it_trained_on():
    from jobs.train.loop import device_tags

    tags = device_tags(torch.device("cpu"), OptimSettings(compile=True), world_size=2)
    assert tags == {"train_device": "cpu", "train_device_name": "cpu", "train_precision": "fp32",
                    "train_compile": "true", "train_world_size": "2"}
