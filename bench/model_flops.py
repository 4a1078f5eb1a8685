"""Question 3: achieved FLOP/s of a training step of each model, as a fraction of measured matmul peak.

    python -m bench.model_flops            # 1 thread and all cores
    python -m bench.model_flops --quick

Peak: a 4096 x 4096 float32 ``torch.mm`` (2 n^3 FLOPs), timed in the same run at the same thread
count. A training step as the jobs take it: forward, loss, backward, gradient clipping, the jobs'
``build_optimizer`` AdamW step and schedule step, on

* MiniRBT-H256 (configs/model/minirbt-h256.json, random init, 2 labels): batch 32 x 64 tokens,
  all real (about the padded shape of a length-grouped review batch);
* the scratch Transformer (model/transformer.py, sizes from configs/train_seq2seq.local-cpu.yaml;
  vocabularies 4,400 source / 1,300 target, as the pinyin tokenizers train them): batch 64,
  source and target 24 tokens (the config's 1,536-token budget per micro-batch).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward:
matrix products and attention, which is what the peak measures; element-wise work, softmax,
layer norm, embedding lookups and the optimiser are not counted (they cost time, not FLOPs of
that kind). For MiniRBT the analytic 6 x non-embedding parameters x tokens + attention is shown
beside it as a check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Result, bench_env, common_args  # noqa: E402


def matmul_peak(n: int, repeats: int) -> list[float]:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, kernel selection
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        out.append(2 * n**3 / (time.perf_counter() - start))
    return out


def counted_flops(step_forward_backward) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step_forward_backward()
    return counter.get_total_flops()


def time_steps(forward_backward, model, steps: int, warmup: int = 2) -> list[float]:
    """Training steps as the jobs take them: the jobs' optimiser and schedule (``build_optimizer``)."""
    import torch

    from jobs.train.optimizer import build_optimizer
    from jobs.train.settings import OptimSettings

    optim = OptimSettings()
    optimizer, scheduler = build_optimizer(model, optim, warmup + steps)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def minirbt(batch: int, seq: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_json_file(str(REPO / "configs/model/minirbt-h256.json"))
    config.num_labels = 2
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).train()
    ids = torch.randint(1000, config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,))

    def forward_backward():
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()

    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    body = sum(p.numel() for p in model.parameters()) - embedding
    layers, hidden = config.num_hidden_layers, config.hidden_size
    analytic = 6 * body * batch * seq + 3 * layers * 4 * batch * seq * seq * hidden  # + QK^T and AV, fwd+bwd
    return model, forward_backward, analytic, f"batch {batch} x {seq} tokens"


def seq2seq(batch: int, seq: int):
    import torch

    from jobs.common import config as config_lib
    from jobs.train_seq2seq import Seq2SeqTrainConfig
    from model.transformer import Seq2SeqTransformer, sequence_loss

    settings = config_lib.load(Seq2SeqTrainConfig, str(REPO / "configs/train_seq2seq.local-cpu.yaml"))
    cfg = settings.model.build(4400, 1300)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(cfg).train()
    src = torch.randint(4, cfg.src_vocab_size, (batch, seq))
    tgt = torch.randint(4, cfg.tgt_vocab_size, (batch, seq + 1))

    def forward_backward():
        logits = model(src, tgt[:, :-1])
        sequence_loss(logits, tgt[:, 1:], cfg.pad_id, settings.objective.label_smoothing).backward()

    return model, forward_backward, None, f"batch {batch}, source and target {seq} tokens"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=5)
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.matmul_n, args.steps, args.repeats = 1024, 2, 3
    bench_env(Path(args.work_dir))
    import torch

    cores = len(os.sched_getaffinity(0))
    result = Result(
        question="3. Model arithmetic (training step FLOP/s vs matmul peak)",
        setup=(f"float32; peak = {args.matmul_n}^2 torch.mm; step = forward + backward + clip + the jobs' AdamW (fused) + schedule; FLOPs "
               "counted with torch.utils.flop_counter.FlopCounterMode (matmuls + attention, forward + backward); "
               f"each step figure the median of {args.repeats} repetitions of {args.steps} steps"))
    models = {"MiniRBT-H256 classifier": minirbt(32, 64), "scratch Transformer (seq2seq local-cpu)": seq2seq(64, 24)}
    flops = {}
    for name, (model, fb, analytic, shape) in models.items():
        flops[name] = counted_flops(fb)
        model.zero_grad(set_to_none=True)
        params = sum(p.numel() for p in model.parameters())
        check = f"; analytic 6*N*tokens + attention: {analytic / 1e9:.2f} GFLOP" if analytic else ""
        result.notes.append(f"{name}: {params / 1e6:.2f}M parameters, {shape}: "
                            f"{flops[name] / 1e9:.2f} GFLOP per step counted{check}")
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        peak = result.figure(f"float32 matmul peak, {threads} thread(s)", "GFLOP/s",
                             [v / 1e9 for v in matmul_peak(args.matmul_n, args.repeats)])
        for name, (model, fb, _, _) in models.items():
            rates = []
            for _ in range(args.repeats):
                times = time_steps(fb, model, args.steps)
                rates.append(flops[name] / (sum(times) / len(times)) / 1e9)
            fig = result.figure(f"{name} training step, {threads} thread(s)", "GFLOP/s", rates,
                                note=f"{flops[name] / 1e9 / statistics.median(rates):.3f} s per step")
            result.ratio(f"{name} / peak, {threads} thread(s)", fig, peak)
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
