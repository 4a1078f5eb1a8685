"""Question 3: achieved FLOP/s of a training step of each model, as a fraction of measured matmul peak.

    python -m bench.model_flops            # 1 thread and all cores
    python -m bench.model_flops --quick
    python -m bench.model_flops --device cuda --precision bf16   # one GPU: MFU against its bf16 matmul peak

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

On ``--device cuda`` the peak is an 8192^2 ``torch.mm`` in the step's dtype (bf16 with ``--precision
bf16``), the step runs under the jobs' autocast (``jobs.train.distributed.autocast_for``), every timing
waits for the GPU (``torch.cuda.synchronize``), and the batches are larger (MiniRBT 256 x 128 tokens,
the Transformer 512 rows): at the CPU's sizes a GPU step is kernel launches, not arithmetic.
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


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int, repeats: int, device: str = "cpu", dtype=None, inner: int = 1) -> list[float]:
    """FLOP/s of ``inner`` back-to-back n^3 products per repetition (a GPU needs several to be timed)."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up: thread pool, kernel selection
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        sync(device)
        out.append(inner * 2 * n**3 / (time.perf_counter() - start))
    return out


def counted_flops(step_forward_backward) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step_forward_backward()
    return counter.get_total_flops()


def time_steps(forward_backward, model, steps: int, warmup: int = 2, device: str = "cpu") -> list[float]:
    """Training steps as the jobs take them: the jobs' optimiser and schedule (``build_optimizer``)."""
    import torch

    from jobs.train.optimizer import build_optimizer
    from jobs.train.settings import OptimSettings

    optim = OptimSettings()
    optimizer, scheduler = build_optimizer(model, optim, warmup + steps)
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def minirbt(batch: int, seq: int, device: str = "cpu", precision: str = "fp32"):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from jobs.common.precision import autocast_for

    config = BertConfig.from_json_file(str(REPO / "configs/model/minirbt-h256.json"))
    config.num_labels = 2
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).train().to(device)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,), device=device)

    def forward_backward():
        with autocast_for(precision, torch.device(device)):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()

    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    body = sum(p.numel() for p in model.parameters()) - embedding
    layers, hidden = config.num_hidden_layers, config.hidden_size
    analytic = 6 * body * batch * seq + 3 * layers * 4 * batch * seq * seq * hidden  # + QK^T and AV, fwd+bwd
    return model, forward_backward, analytic, f"batch {batch} x {seq} tokens"


def seq2seq(batch: int, seq: int, device: str = "cpu", precision: str = "fp32"):
    import torch

    from jobs.common import config as config_lib
    from jobs.common.precision import autocast_for
    from jobs.train.seq2seq import Seq2SeqTrainConfig
    from model.transformer import Seq2SeqTransformer, sequence_loss

    settings = config_lib.load(Seq2SeqTrainConfig, str(REPO / "configs/train_seq2seq.local-cpu.yaml"))
    cfg = settings.model.with_vocab(4400, 1300)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(cfg).train().to(device)
    src = torch.randint(4, cfg.src_vocab_size, (batch, seq), device=device)
    tgt = torch.randint(4, cfg.tgt_vocab_size, (batch, seq + 1), device=device)

    def forward_backward():
        with autocast_for(precision, torch.device(device)):
            logits = model(src, tgt[:, :-1])
            loss = sequence_loss(logits, tgt[:, 1:], cfg.pad_id, settings.objective.label_smoothing)
        loss.backward()

    return model, forward_backward, None, f"batch {batch}, source and target {seq} tokens"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=5)
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per repetition")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="the step's autocast dtype and the peak's matmul dtype; bf16/fp16 need --device cuda")
    args = parser.parse_args(argv)
    if args.precision != "fp32" and args.device != "cuda":
        parser.error("--precision bf16/fp16 is a GPU setting (bf16 matmuls crawl on CPUs without bf16 units)")
    gpu = args.device == "cuda"
    if gpu and args.matmul_n == parser.get_default("matmul_n"):
        args.matmul_n = 8192
    if args.quick:
        args.matmul_n, args.steps, args.repeats = 1024, 2, 3
    bench_env(Path(args.work_dir))
    import torch

    cores = len(os.sched_getaffinity(0))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    where = f"{torch.cuda.get_device_name(0)}, " if gpu else ""
    result = Result(
        question="3. Model arithmetic (training step FLOP/s vs matmul peak)" + (f", {where[:-2]}" if gpu else ""),
        setup=(f"{where}{args.precision}; peak = {args.matmul_n}^2 torch.mm in {args.precision}; step = forward + "
               "backward + clip + the jobs' AdamW (fused) + schedule; FLOPs "
               "counted with torch.utils.flop_counter.FlopCounterMode (matmuls + attention, forward + backward); "
               f"each step figure the median of {args.repeats} repetitions of {args.steps} steps"))
    models = {"MiniRBT-H256 classifier": lambda: minirbt(256 if gpu else 32, 128 if gpu else 64, args.device,
                                                         args.precision),
              "scratch Transformer (seq2seq local-cpu)": lambda: seq2seq(512 if gpu else 64, 24, args.device,
                                                                         args.precision)}
    built = {}
    for name, build in models.items():
        try:
            built[name] = build()
        except ImportError as error:  # e.g. a GPU machine without the seq2seq job's pypinyin
            result.notes.append(f"{name}: not measured ({error})")
    models = built
    flops = {}
    for name, (model, fb, analytic, shape) in models.items():
        flops[name] = counted_flops(fb)
        model.zero_grad(set_to_none=True)
        params = sum(p.numel() for p in model.parameters())
        check = f"; analytic 6*N*tokens + attention: {analytic / 1e9:.2f} GFLOP" if analytic else ""
        result.notes.append(f"{name}: {params / 1e6:.2f}M parameters, {shape}: "
                            f"{flops[name] / 1e9:.2f} GFLOP per step counted{check}")
    for threads in [cores] if gpu else sorted({1, cores}):
        torch.set_num_threads(threads)
        # CPU rows keep the names of earlier BENCHMARKS.md runs; GPU rows name the card and the dtype
        on = f"{args.precision}, {torch.cuda.get_device_name(0)}" if gpu else f"{threads} thread(s)"
        peak = result.figure(f"{'' if gpu else 'float32 '}matmul peak, {on}", "GFLOP/s",
                             [v / 1e9 for v in matmul_peak(args.matmul_n, args.repeats, args.device, dtype,
                                                           inner=20 if gpu else 1)])
        for name, (model, fb, _, _) in models.items():
            rates = []
            for _ in range(args.repeats):
                times = time_steps(fb, model, args.steps, device=args.device)
                rates.append(flops[name] / (sum(times) / len(times)) / 1e9)
            fig = result.figure(f"{name} training step, {on}", "GFLOP/s", rates,
                                note=f"{flops[name] / 1e9 / statistics.median(rates):.3f} s per step")
            result.ratio(f"{name} / peak{' (MFU)' if gpu else ''}, {on}", fig, peak)
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
