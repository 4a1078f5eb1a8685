"""Scoring on a GPU: the batch_infer job with configs/batch_infer.cluster-gpu.yaml's predictor against a hand loop.

    python -m bench.scoring_gpu --device cuda            # 200,000 review texts, fp32 and bf16, 2 repetitions
    python -m bench.scoring_gpu --device cpu --quick     # the plumbing on CPU (tools/gpu_check.sh's dry run)

The same texts (the train split cycled, as Parquet files) and the same model (MiniRBT-H256, random
init, max_length 128) through:

* the job: ``jobs.scoring.batch.run`` with the cluster-gpu config's stages and predictor (one actor
  per GPU, ``num_gpus: 1``, 4,096-row calls, 512-row forward passes), at each ``--precisions``;
  rows/s is the job's own figure (its pipeline, from read to the last written file);
* a hand-written loop in one process: texts sorted by length, tokenized and scored 512 at a time
  on the same device under ``torch.inference_mode``, the model cast to the same dtype; rows/s
  counts tokenizing and scoring (the model loaded beforehand).

On CPU (``--device cpu``) the job's stages are shrunk to 2 cores; it measures nothing worth
reading there: ``bench.scoring_alternatives`` is question 4 on CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Result, bench_env, common_args, minirbt_dir, repeated_corpus  # noqa: E402
from jobs.common.ray_runtime import start_local_ray  # noqa: E402

FORWARD_BATCH = 512


def job_overrides(device: str, gpus: int, cores: int, precision: str, max_length: int) -> list[str]:
    common = [f"max_length={max_length}", f"predictor.precision={precision}", "replace=true",
              "tracking.experiment=bench-scoring-gpu"]
    if device == "cuda":  # the cluster config's stages, sized to this machine's cores
        tokenizers = max(1, min(8, cores - 2 - 2 * gpus))
        return common + [f"predictor.concurrency={gpus}", "predictor.num_gpus=1",
                         f"stages.tokenize_concurrency={tokenizers}"]
    return common + ["predictor.concurrency=1", "predictor.num_gpus=0", "predictor.num_cpus=0.5",
                     "predictor.rows_per_call=512", "predictor.forward_batch_size=64", "stages.read_cpus=0.25",
                     "stages.tokenize_cpus=0.25", "stages.tokenize_concurrency=1", "stages.tokenize_batch_rows=512",
                     "stages.min_blocks=4"]


def run_job(folder: Path, model_dir: Path, work: Path, overrides: list[str], name: str) -> float:
    from jobs.scoring.batch import BatchInferConfig, run
    from jobs.common import config as config_lib

    out = work / "scores-gpu"
    config = config_lib.load(BatchInferConfig, REPO / "configs/batch_infer.cluster-gpu.yaml", [
        f"input={folder}", f"output_dir={out}", f"model={model_dir}", f"run_name={name}", *overrides])
    outcome = run(config)
    shutil.rmtree(out, ignore_errors=True)
    return outcome.rows_per_s


def hand_loop(texts: list[str], model_dir: Path, device: str, precision: str, max_length: int) -> float:
    """What one would write by hand on one device: sort by length, tokenize and score in big batches."""
    import torch

    from model.classifier import class_probabilities, load_classifier

    loaded = load_classifier(str(model_dir))
    model = loaded.model.eval().to(device)
    if precision != "fp32":
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    labels = [0] * len(texts)
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(order), FORWARD_BATCH):
            rows = order[first:first + FORWARD_BATCH]
            encoded = loaded.tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length,
                                       padding=True, return_tensors="pt")
            p = class_probabilities(model, encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
            for i, label in zip(rows, p.argmax(dim=-1).tolist()):  # .tolist() waits for the GPU
                labels[i] = label
    return len(texts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=2)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=None,
                        help="default: fp32 and bf16 on cuda, fp32 on cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 2_000, 1
    precisions = args.precisions or (["fp32", "bf16"] if args.device == "cuda" else ["fp32"])
    if args.device == "cpu" and precisions != ["fp32"]:
        parser.error("bf16/fp16 scoring is a GPU setting (the predictor stays fp32 on CPU)")
    work = Path(args.work_dir)
    bench_env(work)
    import pyarrow.parquet as pq
    import ray
    import torch

    cores = len(os.sched_getaffinity(0))
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    where = torch.cuda.get_device_name(0) if gpus else "cpu"
    folder = repeated_corpus(work, args.rows, max(args.rows // 16, 1_000))
    model_dir = minirbt_dir(work)
    texts = [t for path in sorted(folder.glob("*.parquet")) for t in pq.read_table(path).column("text").to_pylist()]
    result = Result(
        question=f"4g. Scoring on {where} (MiniRBT-H256)",
        setup=(f"{args.rows:,} review texts, max_length {args.max_length}; the job with configs/batch_infer.cluster-gpu"
               f".yaml's stages and predictor ({gpus or 1} actor(s), {'1 GPU each' if gpus else 'CPU'}), against a "
               f"hand loop (sorted by length, {FORWARD_BATCH} rows a forward pass, one process); "
               f"{args.repeats} repetition(s) each"))
    torch.set_num_threads(cores)
    figures = {}
    for precision in precisions:
        rates = [hand_loop(texts, model_dir, args.device, precision, args.max_length) for _ in range(args.repeats)]
        figures[("loop", precision)] = result.figure(f"hand loop, {precision}, {where}", "rows/s", rates)
    start_local_ray(num_cpus=cores, num_gpus=gpus, log_to_driver=False)
    try:
        for precision in precisions:
            overrides = job_overrides(args.device, gpus, cores, precision, args.max_length)
            rates = [run_job(folder, model_dir, work, overrides, f"gpu-bench-{precision}-{i}")
                     for i in range(args.repeats)]
            figures[("job", precision)] = result.figure(f"batch_infer job, {precision}, {where}", "rows/s", rates)
    finally:
        ray.shutdown()
    for precision in precisions:
        result.ratio(f"job / hand loop, {precision}, {where}", figures[("job", precision)],
                     figures[("loop", precision)])
        if precision != "fp32" and ("job", "fp32") in figures:
            result.ratio(f"job {precision} / job fp32, {where}", figures[("job", precision)], figures[("job", "fp32")])
            result.ratio(f"hand loop {precision} / fp32, {where}", figures[("loop", precision)],
                         figures[("loop", "fp32")])
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
