"""Question 4: the Ray Data scoring job against a ``transformers.pipeline`` loop and a hand-written loop.

    python -m bench.scoring_alternatives            # 20,000 review texts, 3 repetitions
    python -m bench.scoring_alternatives --quick    # 2,000 texts

The same texts (the train split cycled to ``--rows`` rows, as Parquet files) and the same model
(MiniRBT-H256, random init, max_length 128) through:

* the job: ``jobs.batch_infer.run`` with configs/batch_infer.local-cpu.yaml (read -> tokenize tasks ->
  2 predictor actors x 1 thread -> Parquet), the model given as a local directory;
  rows/s is the job's own figure (its pipeline, from read to the last written file);
* (a) ``transformers.pipeline("text-classification")`` called over the texts with its defaults
  (one text per forward pass), ``truncation=True``;
* (b) ``model.classifier.classify_texts``: texts sorted by length, tokenized and scored 64 at a
  time under ``torch.inference_mode``.

(a) and (b) run in one process with one torch thread per core, so every path uses all cores and
"per core" is rows/s divided by the core count. Their repetitions score consecutive thirds of the
texts (with the model loaded beforehand they have no start-up to amortise), so each path scores
all ``--rows`` texts; a repetition of the job scores all of them (its actors start inside the
timed pipeline). Three passes of 20,000 rows per path would take the bench past 40 minutes. Each path runs in a fresh process; its peak
memory is sampled (``bench.scoring_memory.TreeMemory``) over that process and every process it
started, Ray's included: RSS every 0.25 s (shared pages counted in every process mapping them,
so Ray's object store is counted several times) and PSS every 2 s (shared pages split between
them; reading it is expensive, see ``TreeMemory``).
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

from bench.common import REPO, Result, bench_env, common_args, minirbt_dir, repeated_corpus  # noqa: E402

METHODS = ("ray", "pipeline", "loop")


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
    if method == "ray":
        import ray

        from jobs.common import config as config_lib
        from jobs.batch_infer import BatchInferConfig, run
        from jobs.common.tracking import TrackingConfig

        base = config_lib.load(BatchInferConfig, str(REPO / "configs/batch_infer.local-cpu.yaml"))
        memory = TreeMemory(os.getpid(), 0.25, pss_interval_s=2.0).__enter__()
        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        extra["ray_init_s"] = time.perf_counter() - start
        for i in range(repeats):
            out = work / "scores"
            config = config_lib.build(BatchInferConfig, {
                **config_lib.to_dict(base), "input": str(folder), "output_dir": str(out), "model": str(model_dir),
                "max_length": max_length, "run_name": f"bench-{i}", "replace": True,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=3)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one path here
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 2_000
    work = Path(args.work_dir)
    bench_env(work)
    folder = repeated_corpus(work, args.rows, 10_000)
    model_dir = minirbt_dir(work).resolve()
    if args.child:
        measured = run_method(args.child, folder, model_dir, work, args.repeats, args.max_length)
        Path(args.child_out).write_text(json.dumps(measured))
        return 0

    cores = len(os.sched_getaffinity(0))
    measured = {}
    for method in args.methods:
        out = work / f"scoring-{method}.json"
        subprocess.run([sys.executable, "-m", "bench.scoring_alternatives", "--child", method, "--child-out",
                        str(out), "--rows", str(args.rows), "--repeats", str(args.repeats), "--work-dir", str(work),
                        "--max-length", str(args.max_length)], check=True, cwd=REPO)
        measured[method] = json.loads(out.read_text())
        print(f"{method}: {measured[method]}", flush=True)

    labels = {"ray": "Ray Data scoring job (batch_infer), 2 actors x 1 thread",
              "pipeline": f"(a) transformers.pipeline loop, {cores} threads",
              "loop": f"(b) length-sorted inference_mode loop, batch 64, {cores} threads"}
    result = Result(
        question="4. Batch scoring (MiniRBT-H256)",
        setup=(f"{args.rows:,} review texts, max_length {args.max_length}, {cores} cores; a repetition of the job "
               f"scores all of them, one of (a) or (b) a consecutive 1/{args.repeats} of them; rows/s counts scoring "
               "(model loaded, Ray started beforehand); each path in a fresh process, its whole process tree's "
               "RSS sampled every 0.25 s, PSS every 2 s"))
    figs = {}
    for method in args.methods:
        m = measured[method]
        figs[method] = result.figure(f"{labels[method]}", "rows/s", m["rows_per_s"],
                                     note=f"{min(m['rows_per_s']) / cores:.0f}-{max(m['rows_per_s']) / cores:.0f} "
                                          "rows/s per core")
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
    if "ray" in measured:
        result.notes.append("The job's peak memory is taken over all of its repetitions (one Ray instance); "
                            "the others' per repetition.")
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
