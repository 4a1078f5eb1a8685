"""Question 4: the Ray Data scoring job against a ``transformers.pipeline`` loop and a hand-written loop.

    python -m bench.scoring_alternatives            # 20,000 review texts, 3 repetitions
    python -m bench.scoring_alternatives --quick    # 2,000 texts

The same texts (the train split cycled to ``--rows`` rows, as Parquet files) and the same model
(MiniRBT-H256, random init, max_length 128) through:

* the job: ``jobs.scoring.batch.run`` with configs/batch_infer.local-cpu.yaml (read -> tokenize tasks ->
  2 predictor actors x 1 thread -> Parquet), the model given as a local directory;
  rows/s is the job's own figure (its pipeline, from read to the last written file);
* (a) ``transformers.pipeline("text-classification")`` called over the texts with its defaults
  (one text per forward pass), ``truncation=True``;
* (b) ``model.classifier.classify_texts``: texts sorted by length, tokenized and scored 64 at a
  time under ``torch.inference_mode``;
* the job again with ``predictor.quantize: dynamic_int8`` (int8 Linear weights), and with
  ``predictor.compile: true`` (torch.compile in each actor, compiled inside the timed pipeline;
  ``--compile-repeats`` repetitions, 1 by default: each costs the job's time again).

Figure of merit: each job's achieved FLOP/s, the forward FLOPs of the rows it scored (matrix
products and attention, as ``bench.model_flops`` counts them with ``FlopCounterMode``; fitted
exactly as a*B*T + b*B*T^2 + c*B from three counted shapes and summed over the padded passes the
predictor cuts: each ``rows_per_call`` rows sorted by length, ``forward_batch_size`` at a time)
divided by its time, against a float32 matmul at all cores measured in the same run. For the int8
job these are the same forward's FLOPs (fp32-equivalent), done in int8 where they are Linear.

Accuracy cost of int8: MiniRBT-H256 fine-tuned from random weights on the train split for
``--finetune-steps`` steps (cached in the work folder: the bench has no registered model; random
weights would put every probability near 0.5, where any rounding flips labels), then the test
split scored in-process by the job's predictor class in fp32 and in int8: label agreement and the
accuracy difference.

(a) and (b) run in one process with one torch thread per core, so every path uses all cores and
"per core" is rows/s divided by the core count. Their repetitions score consecutive thirds of the
texts (with the model loaded beforehand they have no start-up to amortise), so each path scores
all ``--rows`` texts; a repetition of the job scores all of them (its actors start inside the
timed pipeline). Three passes of 20,000 rows per path would take the bench past 40 minutes.
Each path runs in a fresh process; its peak memory is sampled (``bench.scoring_memory.TreeMemory``)
over that process and every process it started, Ray's included: RSS every 0.25 s (shared pages counted
in every process mapping them, so Ray's object store is counted several times) and PSS every 2 s
(shared pages split between them; reading it is expensive, see ``TreeMemory``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (REPO, Ratio, Result, bench_env, common_args, corpus_dir, minirbt_dir,  # noqa: E402
                          repeated_corpus)
from jobs.common.ray_runtime import start_local_ray  # noqa: E402

METHODS = ("ray", "ray-int8", "ray-compile", "pipeline", "loop")
JOB_VARIANTS = {"ray": {}, "ray-int8": {"quantize": "dynamic_int8"}, "ray-compile": {"compile": True}}


def texts_of(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [t for path in sorted(folder.glob("*.parquet"))
            for t in pq.read_table(path, columns=["text"]).column("text").to_pylist()]


def run_method(method: str, folder: Path, model_dir: Path, work: Path, repeats: int, max_length: int) -> dict:
    """One path, ``repeats`` times, in this (fresh) process: rows/s and peak memory per repetition."""
    from bench.scoring_memory import TreeMemory

    cores = len(os.sched_getaffinity(0))
    rates, walls, rss, pss = [], [], [], []
    extra: dict[str, float] = {}
    if method in JOB_VARIANTS:
        import ray

        from jobs.common import config as config_lib
        from jobs.scoring.batch import BatchInferConfig, run
        from jobs.common.tracking import TrackingConfig

        base = config_lib.load(BatchInferConfig, str(REPO / "configs/batch_infer.local-cpu.yaml"))
        memory = TreeMemory(os.getpid(), 0.25, pss_interval_s=2.0).__enter__()
        start = time.perf_counter()
        start_local_ray(num_cpus=cores, log_to_driver=False)
        extra["ray_init_s"] = time.perf_counter() - start
        for i in range(repeats):
            out = work / "scores"
            config = config_lib.build(BatchInferConfig, {
                **config_lib.to_dict(base), "input": {**config_lib.to_dict(base.input), "path": str(folder)},
                "output_dir": str(out), "model": str(model_dir),
                "max_length": max_length, "run_name": f"bench-{i}", "replace": True,
                "predictor": {**config_lib.to_dict(base.predictor), **JOB_VARIANTS[method]},
                "tracking": config_lib.to_dict(TrackingConfig(experiment="bench-scoring"))})
            start = time.perf_counter()
            outcome = run(config)
            walls.append(time.perf_counter() - start)
            rates.append(outcome.rows_per_s)
            shutil.rmtree(out, ignore_errors=True)
        ray.shutdown()
        memory.__exit__(None, None, None)
        rss, pss = [memory.peak_rss / 2**20], [memory.peak_pss / 2**20]
        extra["processes"] = memory.peak_processes
    else:
        import torch

        torch.set_num_threads(cores)
        all_texts = texts_of(folder)
        for i in range(repeats):
            texts = all_texts[i * len(all_texts) // repeats:(i + 1) * len(all_texts) // repeats]
            with TreeMemory(os.getpid(), 0.25, pss_interval_s=2.0) as memory:
                start = time.perf_counter()
                if method == "pipeline":
                    from transformers import pipeline

                    pipe = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir),
                                    device="cpu")
                    loaded = time.perf_counter()
                    predictions = list(pipe(texts, truncation=True, max_length=max_length))
                else:
                    from model.classifier import classify_texts, load_classifier

                    loaded_model = load_classifier(str(model_dir))
                    loaded = time.perf_counter()
                    predictions = classify_texts(loaded_model, texts, batch_size=64, max_length=max_length)[0]
                done = time.perf_counter()
            assert len(predictions) == len(texts)
            rates.append(len(texts) / (done - loaded))  # scoring only, as the job's figure
            walls.append(done - start)
            rss.append(memory.peak_rss / 2**20)
            pss.append(memory.peak_pss / 2**20)
    return {"rows_per_s": rates, "wall_s": walls, "peak_rss_mib": rss, "peak_pss_mib": pss, **extra}


def finetuned_minirbt(work: Path, steps: int, max_length: int) -> Path:
    """MiniRBT-H256 fine-tuned from random weights for ``steps`` steps of 32 train-split reviews (cached)."""
    out = work / f"minirbt-h256-reviews-{steps}steps"
    if (out / "config.json").is_file():
        return out
    import random

    import pyarrow.parquet as pq
    import torch

    from model.classifier import load_classifier

    train = pq.read_table(corpus_dir(work) / "train.parquet", columns=["text", "label"]).to_pydict()
    loaded = load_classifier(str(minirbt_dir(work)))
    model, tokenizer = loaded.model.train(), loaded.tokenizer
    torch.manual_seed(0)
    order = list(range(len(train["text"])))
    random.Random(0).shuffle(order)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    for step in range(steps):
        rows = [order[(step * 32 + i) % len(order)] for i in range(32)]
        batch = tokenizer([train["text"][i] for i in rows], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([train["label"][i] for i in rows])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            print(f"fine-tuning step {step}: loss {loss.item():.3f}", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    model.eval().save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def int8_accuracy(work: Path, steps: int, max_length: int, trained: str | None) -> dict:
    """The test split scored by the job's predictor class in fp32 and in int8, in this process."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from jobs.common.registry import ResolvedModel
    from jobs.scoring.predictors import PredictorSettings, TokenizingClassifierPredictor

    model_dir = Path(trained) if trained else finetuned_minirbt(work, steps, max_length)
    test = pq.read_table(corpus_dir(work) / "test.parquet", columns=["id", "text", "label"])
    truth = np.array(test.column("label").to_pylist())
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    resolved = ResolvedModel(load_uri=str(model_dir), name="bench", version="local", run_id="")
    out = {}
    for name, quantize in (("fp32", "none"), ("int8", "dynamic_int8")):
        predictor = TokenizingClassifierPredictor(resolved, None, PredictorSettings(quantize=quantize),
                                                  str(model_dir), max_length=max_length, keep_columns=("id",))
        scored = predictor(test.select(["id", "text"]))
        out[name] = {"labels": scored["label"], "probs": scored["probability"]}
    fp32, int8 = out["fp32"], out["int8"]
    return {"rows": len(truth), "model": str(model_dir) if trained else f"fine-tuned {steps} steps x 32 rows",
            "accuracy_fp32": float((fp32["labels"] == truth).mean()),
            "accuracy_int8": float((int8["labels"] == truth).mean()),
            "agreement": float((fp32["labels"] == int8["labels"]).mean()),
            "max_probability_diff": float(np.abs(fp32["probs"] - int8["probs"]).max())}


def job_forward_flops(folder: Path, model_dir: Path, max_length: int, rows_per_call: int,
                      forward_batch_size: int) -> tuple[float, float]:
    """Forward FLOPs of the padded passes the job's predictor cuts from ``folder``, and the padding factor."""
    import numpy as np
    import torch

    from bench.model_flops import counted_flops
    from model.classifier import load_classifier

    loaded = load_classifier(str(model_dir))
    model = loaded.model.eval()

    def counted(batch: int, seq: int) -> int:
        ids = torch.full((batch, seq), 1000)
        with torch.inference_mode():
            return counted_flops(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)))

    # FLOPs(B, T) = B * (a*T (Linear layers) + b*T^2 (QK^T, AV) + c (pooler, classifier)): exact, so
    # three counted lengths fix it
    lengths_counted = (16, 32, 64)
    coefficients = np.linalg.solve(np.array([[t, t * t, 1] for t in lengths_counted], dtype=float),
                                   np.array([counted(2, t) / 2 for t in lengths_counted], dtype=float))
    lengths = np.array([len(ids) for ids in loaded.tokenizer(texts_of(folder), truncation=True,
                                                             max_length=max_length)["input_ids"]])
    total, padded = 0.0, 0
    for start in range(0, len(lengths), rows_per_call):
        call = np.sort(lengths[start:start + rows_per_call])
        for cut in range(0, len(call), forward_batch_size):
            b, t = len(call[cut:cut + forward_batch_size]), int(call[cut:cut + forward_batch_size].max())
            total += coefficients @ np.array([b * t, b * t * t, b])
            padded += b * t
    return total, padded / lengths.sum()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=3)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--compile-repeats", type=int, default=1, help="repetitions of the compiled job")
    parser.add_argument("--finetune-steps", type=int, default=150,
                        help="steps of the model whose int8 accuracy is measured (0: skip the accuracy check)")
    parser.add_argument("--accuracy-model", help="a fine-tuned MiniRBT directory for the int8 accuracy check, "
                        "instead of fine-tuning one")
    parser.add_argument("--child", choices=METHODS + ("accuracy",), help=argparse.SUPPRESS)  # internal
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.finetune_steps = 2_000, 20
    work = Path(args.work_dir)
    bench_env(work)
    # at least two files: the reader makes a block per file here, and one block feeds one of the two actors
    folder = repeated_corpus(work, args.rows, min(10_000, -(-args.rows // 2)))
    model_dir = minirbt_dir(work).resolve()
    if args.child == "accuracy":
        Path(args.child_out).write_text(json.dumps(int8_accuracy(work, args.finetune_steps, args.max_length,
                                                                    args.accuracy_model)))
        return 0
    if args.child:
        repeats = args.compile_repeats if args.child == "ray-compile" else args.repeats
        measured = run_method(args.child, folder, model_dir, work, repeats, args.max_length)
        Path(args.child_out).write_text(json.dumps(measured))
        return 0

    cores = len(os.sched_getaffinity(0))
    measured = {}
    accuracy = (args.finetune_steps or args.accuracy_model) and "ray-int8" in args.methods
    for method in list(args.methods) + (["accuracy"] if accuracy else []):
        out = work / f"scoring-{method}.json"
        command = [sys.executable, "-m", "bench.scoring_alternatives", "--child", method, "--child-out", str(out),
                   "--rows", str(args.rows), "--repeats", str(args.repeats), "--work-dir", str(work),
                   "--max-length", str(args.max_length), "--compile-repeats", str(args.compile_repeats),
                   "--finetune-steps", str(args.finetune_steps)]
        subprocess.run(command + (["--accuracy-model", args.accuracy_model] if args.accuracy_model else []),
                       check=True, cwd=REPO)
        measured[method] = json.loads(out.read_text())
        print(f"{method}: {measured[method]}", flush=True)

    labels = {"ray": "Ray Data scoring job (batch_infer), 2 actors x 1 thread",
              "ray-int8": "the job, predictor.quantize: dynamic_int8",
              "ray-compile": "the job, predictor.compile: true",
              "pipeline": f"(a) transformers.pipeline loop, {cores} threads",
              "loop": f"(b) length-sorted inference_mode loop, batch 64, {cores} threads"}
    result = Result(
        question="4. Batch scoring (MiniRBT-H256)",
        setup=(f"{args.rows:,} review texts, max_length {args.max_length}, {cores} cores; a repetition of the job "
               f"scores all of them, one of (a) or (b) a consecutive 1/{args.repeats} of them; rows/s counts scoring "
               "(model loaded, Ray started beforehand); each path in a fresh process, its whole process tree's "
               "RSS sampled every 0.25 s, PSS every 2 s"))
    figs = {}
    jobs = [method for method in args.methods if method in JOB_VARIANTS]
    if jobs:
        import torch

        from bench.model_flops import matmul_peak
        from jobs.scoring.batch import BatchInferConfig
        from jobs.common import config as config_lib

        predictor = config_lib.load(BatchInferConfig, str(REPO / "configs/batch_infer.local-cpu.yaml")).predictor
        flops, pad = job_forward_flops(folder, model_dir, args.max_length, predictor.rows_per_call,
                                       predictor.forward_batch_size)
        torch.set_num_threads(cores)
        n = 2048 if args.quick else 4096
        peak = result.figure(f"float32 matmul peak, {cores} threads ({n}^2 torch.mm)", "GFLOP/s",
                             [v / 1e9 for v in matmul_peak(n, args.repeats)])
        result.notes.append(f"Forward FLOPs of the {args.rows:,} rows as the job's predictor pads them "
                            f"({predictor.rows_per_call}-row calls sorted by length, {predictor.forward_batch_size} "
                            f"rows a pass; {pad:.2f}x the real tokens): {flops / 1e9:,.0f} GFLOP.")
    for method in args.methods:
        m = measured[method]
        figs[method] = result.figure(f"{labels[method]}", "rows/s", m["rows_per_s"],
                                     note=f"{min(m['rows_per_s']) / cores:.0f}-{max(m['rows_per_s']) / cores:.0f} "
                                          "rows/s per core")
        if method in JOB_VARIANTS:
            achieved = result.figure(f"{labels[method]}: achieved forward FLOP/s", "GFLOP/s",
                                     [rate * flops / args.rows / 1e9 for rate in m["rows_per_s"]])
            result.ratio(f"{labels[method]}: achieved FLOP/s / matmul peak", achieved, peak)
        result.figure(f"{labels[method]}: peak RSS, process tree", "MiB", m["peak_rss_mib"],
                      note=f"{m['processes']} processes" if "processes" in m else "")
        result.figure(f"{labels[method]}: peak PSS, process tree", "MiB", m["peak_pss_mib"])
        result.figure(f"{labels[method]}: wall time per run", "s", m["wall_s"],
                      note=f"ray.init {m['ray_init_s']:.1f} s before the first run" if "ray_init_s" in m else "")
    if "ray" in figs and "pipeline" in figs:
        result.ratio("job / (a) pipeline loop, rows/s per core", figs["ray"], figs["pipeline"], aim=2.0)
    if "ray" in figs and "loop" in figs:
        result.ratio("job / (b) hand-written loop, rows/s per core", figs["ray"], figs["loop"], aim=0.9)
    if "loop" in figs and "pipeline" in figs:
        result.ratio("(b) hand-written loop / (a) pipeline loop", figs["loop"], figs["pipeline"])
    if "ray-int8" in figs and "ray" in figs:
        result.ratio("job int8 / job fp32, rows/s", figs["ray-int8"], figs["ray"], aim=1.5)
    if "ray-compile" in figs and "ray" in figs:
        result.ratio("job compiled / job fp32, rows/s", figs["ray-compile"], figs["ray"])
    if "accuracy" in measured:
        a = measured["accuracy"]
        result.figure("int8 / fp32 label agreement, test split", "fraction", [a["agreement"]],
                      note=f"{a['rows']} rows; largest probability difference {a['max_probability_diff']:.3f}")
        result.figure("test accuracy, fp32", "fraction", [a["accuracy_fp32"]],
                      note=f"MiniRBT-H256: {a['model']}")
        result.figure("test accuracy, int8", "fraction", [a["accuracy_int8"]])
        diff = 100 * (a["accuracy_int8"] - a["accuracy_fp32"])
        result.ratios.append(Ratio("int8 - fp32 test accuracy, points", diff, "within 0.5", abs(diff) <= 0.5))
    if "ray" in measured:
        result.notes.append("The job's peak memory is taken over all of its repetitions (one Ray instance); "
                            "the others' per repetition.")
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
