"""Question 2: the Ray Train fine-tuning job against a plain PyTorch loop and Hugging Face's Trainer.

    python -m bench.train_throughput                # 768 train rows, 3 epochs per run
    python -m bench.train_throughput --quick        # 256 rows (smoke run)
    python -m bench.train_throughput --device cuda --precision bf16 --rows 8192 --batch-size 64 \
        --paths plain1 plain1c ray1 ray1c          # one GPU (tools/gpu_check.sh)

Same model (MiniRBT-H256, random init, configs/model/minirbt-h256.json), same rows, batch 32 per
worker, max_length 128, AdamW (``jobs.train.loop.build_optimizer``) with linear warm-up/decay and
gradient clipping at 1.0, length-grouped dynamic padding (16 batches sorted by length) in all of:

* plain loop, one process (``--threads`` torch threads, then one thread), text tokenized up front;
* plain loop, torch DDP over two processes (gloo, one thread each), ``torch.multiprocessing``;
* Ray Train: ``jobs.train.classifier.run`` (the real job: Ray Data read + tokenize stage,
  ``TorchTrainer``, the shared loop, per-epoch evaluation on a 64-row split, checkpoints, MLflow),
  one worker with ``--threads`` threads, one worker with one thread, two workers with one thread each;
* Hugging Face ``Trainer`` on one process (``--threads`` threads, ``train_sampling_strategy="group_by_length"``);
* compiled: the plain one-process loop and the one-worker job again with ``torch.compile`` (the job's
  ``optim.compile``: the model compiled in place before DDP would wrap it); the first epoch pays the
  compilation, the steady rate is the median epoch and the wall time shows the cost;
* controls: the plain one-process loop and plain DDP again, in fresh processes, beside the idle
  Ray left by the Ray Train runs (the other plain paths run before Ray starts): Ray's own
  processes share the cores, and on a small machine that alone slows a step whose threads or
  processes wait for each other.

Every path time-stamps the start of each epoch, each step (when its batch is ready) and the end
of the epoch's last step. Steady state is an epoch's rows (or non-padding tokens) over the time
from its first batch to its end: every path counts the same rows, and what comes before the
first batch (Ray Data starting the epoch's pipeline again) is reported apart, as "epoch start
to first batch". Each epoch is a repetition. Wall time counts the whole run, start-up included
(for Ray Train: the job's ``run()`` in an already started Ray, whose own start-up is reported apart).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import LABELS, Result, bench_env, common_args, corpus_dir, minirbt_dir, timed  # noqa: E402
from jobs.train.classifier import ClassifierTask  # noqa: E402
from jobs.common.ray_runtime import start_local_ray  # noqa: E402


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    model_dir: str
    train_file: str
    epochs: int
    batch_size: int = 32
    max_length: int = 128
    lr: float = 5e-4
    warmup_ratio: float = 0.1
    length_grouping: int = 16
    threads: int = 1
    seed: int = 0
    device: str = "cpu"  # cpu | cuda (plain and one-worker paths)
    precision: str = "fp32"  # bf16/fp16 autocast, GPU only (the jobs' optim.precision)
    compile: bool = False  # torch.compile the model (the jobs' optim.compile)


# --------------------------------------------------------------------------- step logs


def write_event(handle, epoch: int, kind: str, n_samples: int = 0, n_tokens: int = 0,
                at: float | None = None) -> None:
    """One line per event: epoch, time, start|step|end, samples, tokens."""
    handle.write(f"{epoch} {at or time.time():.6f} {kind} {n_samples} {n_tokens}\n")
    handle.flush()


@dataclass
class EpochRates:
    samples_per_s: list[float]  # per epoch, first batch -> end, all ranks
    tokens_per_s: list[float]
    first_batch_s: list[float]  # per epoch, epoch start -> first batch (the slowest rank)
    first_step_at: float  # time of the run's first step


def epoch_rates(log_dir: Path) -> EpochRates:
    events: dict[int, list[tuple[float, str, int, int]]] = {}
    for path in sorted(log_dir.glob("rank*.txt")):
        for line in path.read_text().split("\n"):
            if line:
                epoch, t, kind, n, tok = line.split()
                events.setdefault(int(epoch), []).append((float(t), kind, int(n), int(tok)))
    rates = EpochRates([], [], [], float("inf"))
    for epoch in sorted(events):
        steps = [e for e in events[epoch] if e[1] == "step"]
        starts = [e[0] for e in events[epoch] if e[1] == "start"]
        ends = [e[0] for e in events[epoch] if e[1] == "end"]
        if not steps or not ends:
            raise ValueError(f"{log_dir}: epoch {epoch} has no steps or no end")
        first = min(t for t, *_ in steps)
        rates.first_step_at = min(rates.first_step_at, first)
        elapsed = max(ends) - first
        rates.samples_per_s.append(sum(n for _, _, n, _ in steps) / elapsed)
        rates.tokens_per_s.append(sum(tok for *_, tok in steps) / elapsed)
        if starts:
            rates.first_batch_s.append(first - min(starts))
    return rates


class TimedClassifierTask(ClassifierTask):
    """The job's own task, plus a time stamp per training step (appended to ``<log_dir>/rank<r>.txt``)."""

    def __init__(self, *args, log_dir: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_dir = log_dir
        self._epoch = 0
        self._open_epoch = False
        self._handle = None

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}

    def _log(self):
        if self._handle is None:
            import ray.train

            rank = ray.train.get_context().get_world_rank()
            self._handle = open(Path(self.log_dir) / f"rank{rank}.txt", "a", encoding="utf-8")
        return self._handle

    def batches(self, split, epoch, seed, shuffle):
        if split == "train":
            self._epoch, self._open_epoch = epoch, True
            write_event(self._log(), epoch, "start")
        elif self._open_epoch:  # the loop evaluates right after an epoch's last step
            self._open_epoch = False
            write_event(self._log(), self._epoch, "end")
        return super().batches(split, epoch, seed, shuffle)

    def train_loss(self, model, batch):
        ready = time.time()
        loss, n_samples, n_tokens = super().train_loss(model, batch)
        write_event(self._log(), self._epoch, "step", n_samples, n_tokens, at=ready)
        return loss, n_samples, n_tokens


# --------------------------------------------------------------------------- the paths


def tokenized_rows(spec: TrainSpec, rank: int, world: int):
    import numpy as np
    import pyarrow.parquet as pq

    from data_pipeline.tokenization import load_tokenizer

    table = pq.read_table(spec.train_file, columns=["text", "label"])
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    per_rank = len(texts) // world  # equal shards, as Ray's streaming_split(equal=True)
    texts, labels = texts[rank * per_rank:(rank + 1) * per_rank], labels[rank * per_rank:(rank + 1) * per_rank]
    tokenizer = load_tokenizer(spec.model_dir)
    ids = tokenizer(texts, truncation=True, max_length=spec.max_length, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    rows = np.empty(len(ids), dtype=object)
    rows[:] = [np.asarray(r, dtype=np.int32) for r in ids]
    return tokenizer, {"input_ids": rows, "num_tokens": np.array([len(r) for r in ids], dtype=np.int32),
                       "label": np.array(labels, dtype=np.int64)}


def plain_worker(rank: int, world: int, spec: TrainSpec, port: int, log_dir: str) -> None:
    """A plain PyTorch loop (DDP when world > 1): what one would write without the job system."""
    import numpy as np
    import torch

    from data_pipeline.tokenization import PadCollate
    from data_pipeline.batching import length_grouped
    from jobs.common.precision import autocast_for
    from jobs.train.distributed import compile_in_place, seed_everything
    from jobs.train.optimizer import build_optimizer
    from jobs.train.settings import OptimSettings
    from model.classifier import load_classifier

    torch.set_num_threads(spec.threads)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    tokenizer, rows = tokenized_rows(spec, rank, world)
    seed_everything(spec.seed)
    device = torch.device(spec.device)
    model = load_classifier(spec.model_dir, LABELS).model.to(device)
    if spec.compile:
        model = compile_in_place(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    steps_per_epoch = -(-len(rows["label"]) // spec.batch_size)
    optim = OptimSettings(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, warmup_ratio=spec.warmup_ratio)
    optimizer, scheduler = build_optimizer(model, optim, spec.epochs * steps_per_epoch)
    collate = PadCollate(tokenizer.pad_token_id)
    window = spec.batch_size * spec.length_grouping
    with open(Path(log_dir) / f"rank{rank}.txt", "a", encoding="utf-8") as handle:
        for epoch in range(spec.epochs):
            write_event(handle, epoch, "start")
            rng = np.random.default_rng(spec.seed * 1_000_003 + epoch)
            order = rng.permutation(len(rows["label"]))
            chunks = ({k: v[order[i:i + window]] for k, v in rows.items()} for i in range(0, len(order), window))
            for batch in length_grouped(chunks, spec.batch_size, collate, rng):
                write_event(handle, epoch, "step", int(batch["labels"].shape[0]), int(batch["attention_mask"].sum()))
                with autocast_for(spec.precision, device):
                    out = model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device), labels=batch["labels"].to(device))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the epoch ends when its kernels have run, not when queued
            write_event(handle, epoch, "end")
    if world > 1:
        torch.distributed.destroy_process_group()


def run_plain(spec: TrainSpec, world: int, log_dir: Path, fresh_process: bool = False) -> None:
    if world == 1 and not fresh_process:
        plain_worker(0, 1, spec, 0, str(log_dir))
        return
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(plain_worker, args=(world, spec, port, str(log_dir)), nprocs=world, join=True)


def run_hf_trainer(spec: TrainSpec, log_dir: Path) -> None:
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from model.classifier import load_classifier

    torch.set_num_threads(spec.threads)
    tokenizer, rows = tokenized_rows(spec, 0, 1)
    dataset = [{"input_ids": ids.tolist(), "labels": int(label)}
               for ids, label in zip(rows["input_ids"], rows["label"])]
    counts: list[tuple[int, int]] = []
    pad = DataCollatorWithPadding(tokenizer)

    def collate(features):
        batch = pad(features)
        counts.append((int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum())))
        return batch

    events: list[tuple[str, float]] = []

    class StepTimes(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            events.append(("start", time.time()))

        def on_step_begin(self, args, state, control, **kwargs):  # after the step's batch was fetched
            events.append(("step", time.time()))

        def on_epoch_end(self, args, state, control, **kwargs):
            events.append(("end", time.time()))

    steps_per_epoch = -(-len(dataset) // spec.batch_size)
    args = TrainingArguments(
        output_dir=str(log_dir / "hf"), per_device_train_batch_size=spec.batch_size, num_train_epochs=spec.epochs,
        learning_rate=spec.lr, weight_decay=0.01, warmup_steps=int(spec.warmup_ratio * spec.epochs * steps_per_epoch),
        lr_scheduler_type="linear", max_grad_norm=1.0, train_sampling_strategy="group_by_length", seed=spec.seed,
        use_cpu=True,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=load_classifier(spec.model_dir, LABELS).model, args=args, train_dataset=dataset,
                      data_collator=collate, callbacks=[StepTimes()])
    trainer.train()
    with open(log_dir / "rank0.txt", "w", encoding="utf-8") as handle:
        epoch, batches = -1, iter(counts)  # the i-th collated batch is the i-th step
        for kind, t in events:
            epoch += kind == "start"
            write_event(handle, epoch, kind, *(next(batches) if kind == "step" else (0, 0)), at=t)


def run_ray_train(spec: TrainSpec, workers: int, threads: int, work: Path, log_dir: Path, tiny_split: str) -> None:
    import jobs.train.classifier as job
    from jobs.common.tracking import TrackingConfig
    from jobs.train.classifier import ClassifierData, ClassifierModel, ClassifierOptim, FinetuneConfig
    from jobs.train.settings import RunSettings, ScalingSettings

    config = FinetuneConfig(
        data=ClassifierData(train=spec.train_file, val=tiny_split, test=tiny_split, max_length=spec.max_length),
        model=ClassifierModel(name_or_path=spec.model_dir),
        optim=ClassifierOptim(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
                              warmup_ratio=spec.warmup_ratio, length_grouping=spec.length_grouping, seed=spec.seed,
                              log_every_steps=10, compile=spec.compile, precision=spec.precision),
        scaling=ScalingSettings(num_workers=workers, cpus_per_worker=0.5, torch_threads=threads,
                                use_gpu=spec.device == "cuda"),
        run=RunSettings(storage_path=str(work / "ray-train"), checkpoint_metric="val_accuracy",
                        checkpoint_mode="max", keep_checkpoints=1),
        tracking=TrackingConfig(experiment="bench-training"), baselines=False)
    # The job builds its task from this module-level name; a subclass adds the step time stamps.
    original = job.ClassifierTask
    job.ClassifierTask = lambda *a, **k: TimedClassifierTask(*a, log_dir=str(log_dir), **k)
    try:
        job.run(config)
    finally:
        job.ClassifierTask = original


# --------------------------------------------------------------------------- driver

# The paths without Ray run first, before Ray starts, so none of them shares the machine with Ray's
# processes; the controls last: the plain loops again, in fresh processes, beside the idle Ray that
# served the Ray Train runs, which separates what Ray's mere presence costs from Ray Train's own cost.
# The "x1" pair leaves a core to spare on 2 cores (one thread, one process or worker): there Ray's
# own processes do not take time from the training step.
PATHS = ("plain1", "plain1c", "plain1x1", "plain2", "hf", "ray1", "ray1c", "ray1x1", "ray2", "plain1_ray_idle",
         "plain2_ray_idle")
RAY_PATHS = ("ray1", "ray1c", "ray1x1", "ray2", "plain1_ray_idle", "plain2_ray_idle")  # run with Ray started
GPU_PATHS = ("plain1", "plain1c", "ray1", "ray1c")  # the paths --device cuda runs (one process, one GPU)


def gpus_for(device: str) -> int | None:
    import torch

    return torch.cuda.device_count() if device == "cuda" else None  # None: Ray's own detection


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def subset(work: Path, rows: int) -> tuple[str, str]:
    """The first ``rows`` train rows, and a 64-row split for the job's per-epoch evaluation."""
    import pyarrow.parquet as pq

    corpus = corpus_dir(work)
    out = work / "train-subsets"
    out.mkdir(parents=True, exist_ok=True)
    train, tiny = out / f"train-{rows}.parquet", out / "val-64.parquet"
    if not train.is_file():
        pq.write_table(pq.read_table(corpus / "train.parquet").slice(0, rows), train)  # keeps the label metadata
    if not tiny.is_file():
        pq.write_table(pq.read_table(corpus / "val.parquet").slice(0, 64), tiny)
    return str(train.resolve()), str(tiny.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=3)
    parser.add_argument("--rows", type=int, default=768, help="train rows (all paths see the same rows)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of one process (default: cores)")
    parser.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                        help=f"default: all on CPU, {' '.join(GPU_PATHS)} on cuda")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per step and worker")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="autocast dtype (the jobs' optim.precision); bf16/fp16 need --device cuda")
    args = parser.parse_args(argv)
    args.paths = args.paths or list(GPU_PATHS if args.device == "cuda" else PATHS)
    if args.device == "cuda" and set(args.paths) - set(GPU_PATHS):
        parser.error(f"--device cuda runs {', '.join(GPU_PATHS)} only")
    if args.precision != "fp32" and args.device != "cuda":
        parser.error("--precision bf16/fp16 is a GPU setting (the jobs refuse it on CPU)")
    if args.quick:
        args.rows = 256
    work = Path(args.work_dir).resolve()  # the Ray Train worker writes its step log there from another directory
    bench_env(work)
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or cores
    train_file, tiny = subset(work, args.rows)
    spec = TrainSpec(model_dir=str(minirbt_dir(work).resolve()), train_file=train_file, epochs=args.repeats,
                     threads=threads, batch_size=args.batch_size, device=args.device, precision=args.precision)
    ray_started = None

    measured: dict[str, tuple[EpochRates, float]] = {}
    first_steps: dict[str, float] = {}
    for path in args.paths:
        log_dir = Path(tempfile.mkdtemp(prefix=f"{path}-", dir=work))
        if path in RAY_PATHS and ray_started is None:
            import ray

            ray_started, _ = timed(lambda: start_local_ray(num_cpus=cores, num_gpus=gpus_for(args.device),
                                                           log_to_driver=False))
        start = time.time()
        if path == "plain1":
            run_plain(spec, 1, log_dir)
        elif path == "plain1c":
            run_plain(replace(spec, compile=True), 1, log_dir)
        elif path == "ray1c":
            run_ray_train(replace(spec, compile=True), 1, threads, work, log_dir, tiny)
        elif path == "plain1x1":
            run_plain(replace(spec, threads=1), 1, log_dir)
        elif path == "plain1_ray_idle":  # a spawned process: the driver is connected to Ray, it is not
            run_plain(spec, 1, log_dir, fresh_process=True)
        elif path in ("plain2", "plain2_ray_idle"):
            run_plain(replace(spec, threads=1), 2, log_dir)
        elif path == "hf":
            run_hf_trainer(spec, log_dir)
        elif path == "ray1":
            run_ray_train(spec, 1, threads, work, log_dir, tiny)
        elif path == "ray1x1":
            run_ray_train(spec, 1, 1, work, log_dir, tiny)
        else:
            run_ray_train(spec, 2, 1, work, log_dir, tiny)
        wall = time.time() - start
        rates = epoch_rates(log_dir)
        measured[path] = (rates, wall)
        first_steps[path] = rates.first_step_at - start
        print(f"{path}: {statistics.median(rates.samples_per_s):.1f} samples/s, "
              f"{statistics.median(rates.tokens_per_s):.0f} tokens/s steady; wall {wall:.1f} s, "
              f"first step after {rates.first_step_at - start:.1f} s", flush=True)
    if ray_started is not None:
        ray.shutdown()

    on = f" on {device_name(args.device)}, {args.precision}" if args.device == "cuda" else ""
    labels = {"plain1": f"plain PyTorch loop, 1 process x {threads} threads",
              "plain1c": f"plain PyTorch loop, torch.compile, 1 process x {threads} threads",
              "ray1c": f"Ray Train job, optim.compile, 1 worker x {threads} threads",
              "ray1": f"Ray Train job, 1 worker x {threads} threads",
              "plain1x1": "plain PyTorch loop, 1 process x 1 thread",
              "ray1x1": "Ray Train job, 1 worker x 1 thread",
              "plain2": "plain PyTorch DDP, 2 processes x 1 thread (gloo)",
              "ray2": "Ray Train job, 2 workers x 1 thread (gloo)",
              "hf": f"Hugging Face Trainer, 1 process x {threads} threads",
              "plain1_ray_idle": f"plain PyTorch loop, 1 process x {threads} threads, beside an idle Ray",
              "plain2_ray_idle": "plain PyTorch DDP, 2 processes x 1 thread (gloo), beside an idle Ray"}
    labels = {key: label + on for key, label in labels.items()}
    result = Result(
        question="2. Training (MiniRBT-H256 fine-tuning)" + (f", {device_name(args.device)}" if on else ""),
        setup=(f"{args.rows:,} train rows, batch {args.batch_size} per worker, max_length 128, "
               f"{args.device}, {args.precision}, length-grouped dynamic padding, "
               f"AdamW + linear schedule + clipping at 1.0; one run per path of {args.repeats} epochs, each epoch "
               "a repetition; steady = the epoch's rows / (first batch -> end of its last step)"))
    figs = {}
    for path in args.paths:
        rates, _ = measured[path]
        figs[path] = result.figure(f"{labels[path]}: steady", "samples/s", rates.samples_per_s)
        result.figure(f"{labels[path]}: steady", "tokens/s", rates.tokens_per_s)
    for path in args.paths:
        rates, wall = measured[path]
        if rates.first_batch_s:
            result.figure(f"{labels[path]}: epoch start to first batch", "s", rates.first_batch_s)
    for path in args.paths:
        rates, wall = measured[path]
        result.figure(f"{labels[path]}: wall time of the run, start-up included", "s", [wall])
    for path in args.paths:
        result.figure(f"{labels[path]}: start of the run to its first training step", "s", [first_steps[path]])
    if ray_started is not None:
        result.figure("ray.init (once, before the Ray Train runs)", "s", [ray_started])
    equal = {("ray1", "plain1"), ("ray1x1", "plain1x1"), ("ray2", "plain2")}  # the aim's comparisons
    for ours, base, name in (("ray1", "plain1", "1 Ray Train worker / 1 plain process"),
                             ("ray1x1", "plain1x1", "1 Ray Train worker x 1 thread / 1 plain process x 1 thread"),
                             ("ray2", "plain2", "2 Ray Train workers / 2-process plain DDP"),
                             ("ray1", "hf", "1 Ray Train worker / HF Trainer"),
                             ("plain1c", "plain1", "plain loop compiled / eager"),
                             ("ray1c", "ray1", "1 Ray Train worker, optim.compile / eager"),
                             ("hf", "plain1", "HF Trainer / plain loop"),
                             ("ray2", "ray1", "2 Ray Train workers x 1 thread / 1 worker x all threads"),
                             ("plain2", "plain1", "plain DDP 2 x 1 thread / 1 process x all threads"),
                             ("plain1_ray_idle", "plain1", "plain loop beside an idle Ray / plain loop alone"),
                             ("ray1", "plain1_ray_idle", "1 Ray Train worker / plain loop beside an idle Ray"),
                             ("plain2_ray_idle", "plain2", "plain DDP beside an idle Ray / plain DDP alone"),
                             ("ray2", "plain2_ray_idle", "2 Ray Train workers / plain DDP beside an idle Ray")):
        if ours in figs and base in figs:
            aim = 0.95 if (ours, base) in equal else None
            result.ratio(f"{name}, steady samples/s", figs[ours], figs[base], aim=aim,
                         aim_text=">= 0.95 (overhead within 5%)" if aim else "")
    for ours, base, name in (("ray1", "plain1", "1 Ray Train worker / 1 plain process"),
                             ("ray1x1", "plain1x1", "1 Ray Train worker x 1 thread / 1 plain process x 1 thread"),
                             ("ray2", "plain2", "2 Ray Train workers / 2-process plain DDP"),
                             ("plain1c", "plain1", "plain loop compiled / eager"),
                             ("ray1c", "ray1", "1 Ray Train worker, optim.compile / eager")):
        if ours in measured and base in measured:
            result.ratio(f"{name}, wall time of the run (lower is better)", measured[ours][1], measured[base][1])
    result.notes.append("A plain process tokenizes its rows up front; Ray Train reads and tokenizes them in a "
                        "Ray Data stage while it trains, evaluates a 64-row split and writes a checkpoint after "
                        "every epoch, and logs to MLflow and registers the model at the end: all of that is in "
                        "its wall time, none of it in the steady rates.")
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
