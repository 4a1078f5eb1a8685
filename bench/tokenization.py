"""Question 1: rows/s of the Ray Data tokenization stage against the same fast tokenizer in one process.

    python -m bench.tokenization                 # 200,000 rows, 3 repetitions
    python -m bench.tokenization --quick         # 20,000 rows (smoke run)

All three read the same Parquet files (review texts cycled to ``--rows`` rows) and run the same
``data_pipeline.tokenization.TokenizeBatch`` on batches of ``--batch-rows`` rows (MiniRBT's
bert-base-chinese WordPiece, ``max_length`` 128), so the work per row is identical:

* one process, one thread (``TOKENIZERS_PARALLELISM=false``): the per-core baseline;
* one process, the tokenizer's own thread pool (``TOKENIZERS_PARALLELISM=true``, one thread per core);
* Ray Data: ``data_pipeline.ray_stages.read_parquet`` + ``data_pipeline.ray_stages.tokenized`` (the training
  jobs' stage, ``tokenize_texts`` tasks) with one task per core, consumed on the driver as Arrow batches; once
  with read tasks beside the tokenize tasks (the jobs' default), once with ``read_in_tokenize_tasks`` (Ray Data
  fuses the read into the tokenize tasks, one block per file).

Ray is started once (its start-up is reported apart); one untimed warm-up pass per configuration loads the
tokenizer into the worker processes, as in a long-running job.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, bench_env, common_args, minirbt_dir, repeated_corpus, timed  # noqa: E402
from jobs.common.ray_runtime import start_local_ray  # noqa: E402


def one_process(files: list[Path], tokenizer_path: str, batch_rows: int, max_length: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipeline.tokenization import TokenizeBatch

    stage = TokenizeBatch(tokenizer_path, "text", max_length, ["id"])
    rows = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["id", "text"]):
            rows += stage(pa.Table.from_batches([batch])).num_rows
    return rows


def ray_data(files: list[Path], tokenizer_path: str, resources, max_length: int) -> tuple[int, float, int]:
    """Rows, seconds to the first tokenized block and rows in it."""
    from data_pipeline.paths import resolve_parquet_files
    from data_pipeline.ray_stages import read_parquet, tokenized

    parquet = resolve_parquet_files(str(files[0].parent))
    parquet = replace(parquet, paths=tuple(p for p in parquet.paths if Path(p).name in {f.name for f in files}))
    ds = tokenized(read_parquet(parquet, ["id", "text"], resources), tokenizer_path, "text", max_length, ["id"],
                   resources)
    start, first, first_rows, rows = time.perf_counter(), 0.0, 0, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if not rows:
            first, first_rows = time.perf_counter() - start, batch.num_rows
        rows += batch.num_rows
    return rows, first, first_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rows-per-file", type=int, default=25_000)
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=16, help="read blocks (min_blocks): work units for Ray Data")
    parser.add_argument("--tasks", type=int, default=None, help="concurrent tokenize tasks (default: cores)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rows_per_file = 20_000, 5_000
    work = Path(args.work_dir)
    bench_env(work)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # Ray's tasks inherit it: one thread each
    cores = len(os.sched_getaffinity(0))
    tasks = args.tasks or cores

    tokenizer_path = str(minirbt_dir(work).resolve())
    folder = repeated_corpus(work, args.rows, args.rows_per_file)
    files = sorted(folder.glob("*.parquet"))

    def local(threads: bool) -> float:
        # The tokenizers library reads this variable on every batch call.
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
        try:
            seconds, rows = timed(lambda: one_process(files, tokenizer_path, args.batch_rows, args.max_length))
        finally:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        assert rows == args.rows, rows
        return rows / seconds

    one_thread, pool = [], []
    for _ in range(args.repeats):
        one_thread.append(local(False))
        pool.append(local(True))
        print(f"one process: {one_thread[-1]:.0f} rows/s (1 thread), {pool[-1]:.0f} rows/s (pool)", flush=True)

    import ray

    from data_pipeline.ray_stages import StageResources

    ray.data.DataContext.get_current().enable_progress_bars = False
    init_s, _ = timed(lambda: start_local_ray(num_cpus=cores, log_to_driver=False))
    # One CPU slot per tokenize task minus what the read tasks and the driver's consumer need.
    resources = StageResources(read_cpus=0.25, tokenize_cpus=round((cores - 0.25) / tasks, 2) - 0.01,
                               tokenize_concurrency=tasks, tokenize_batch_rows=args.batch_rows,
                               min_blocks=args.blocks)
    # No read tasks: the whole CPU slot per tokenize task.
    fused = replace(resources, tokenize_cpus=round(cores / tasks, 2) - 0.01, read_in_tokenize_tasks=True)

    def passes(stage: StageResources, warm_files: list[Path]) -> tuple[float, list, list, list]:
        warm_s, _ = timed(lambda: ray_data(warm_files, tokenizer_path, stage, args.max_length))
        rates, after_first, first_s = [], [], []
        for _ in range(args.repeats):
            seconds, (rows, first, first_rows) = timed(lambda: ray_data(files, tokenizer_path, stage,
                                                                        args.max_length))
            assert rows == args.rows, rows
            rates.append(rows / seconds)
            after_first.append((rows - first_rows) / (seconds - first))
            first_s.append(first)
            print(f"Ray Data{' (read in the tokenize tasks)' if stage.read_in_tokenize_tasks else ''}: "
                  f"{rates[-1]:.0f} rows/s, first block after {first:.1f} s", flush=True)
        return warm_s, rates, after_first, first_s

    warm_s, distributed, after_first, first_s = passes(resources, files[:1])
    # One file is one fused task: warm every task's process.
    fused_warm_s, fused_rates, fused_after_first, fused_first_s = passes(fused, files[:tasks])
    ray.shutdown()

    result = Result(
        question="1. Tokenization",
        setup=(f"{args.rows:,} review texts (train split cycled) in {len(files)} Parquet files; TokenizeBatch, "
               f"batches of {args.batch_rows} rows, max_length {args.max_length}; Ray Data: read_parquet "
               f"({args.blocks} blocks) -> tokenize_texts tasks x {tasks} -> driver iterator, or read_parquet fused "
               f"into the tokenize tasks (one block per file); {cores} cores"))
    base = result.figure("one process, 1 tokenizer thread", "rows/s", one_thread)
    pooled = result.figure(f"one process, tokenizer thread pool ({cores} threads)", "rows/s", pool)
    ray_fig = result.figure(f"Ray Data stage, {tasks} tasks x 1 thread, read tasks beside them", "rows/s",
                            distributed)
    steady = result.figure("Ray Data stage, read tasks beside: after its first tokenized block", "rows/s",
                           after_first, note="start-up left out")
    result.figure("Ray Data, read tasks beside: execution start to first tokenized block", "s", first_s)
    fused_fig = result.figure(f"Ray Data stage, {tasks} tasks x 1 thread, read in the tokenize tasks", "rows/s",
                              fused_rates, note="read_in_tokenize_tasks")
    result.figure("Ray Data, read in the tokenize tasks: after its first tokenized block", "rows/s",
                  fused_after_first, note="start-up left out")
    result.figure("Ray Data, read in the tokenize tasks: execution start to first tokenized block", "s",
                  fused_first_s)
    result.figure("ray.init (once, not in the rows/s)", "s", [init_s])
    result.figure(f"Ray Data warm-up passes (1 file; {tasks} files read in the tokenize tasks; untimed above)", "s",
                  [warm_s, fused_warm_s])
    result.ratio("Ray Data, read in the tokenize tasks / one process, 1 thread", fused_fig, base, aim=0.9 * cores,
                 aim_text=f">= {0.9 * cores:.1f} (~{cores}x on {cores} cores)")
    result.ratio("Ray Data, read tasks beside / one process, 1 thread", ray_fig, base)
    result.ratio("Ray Data, read tasks beside, after its first block / one process, 1 thread", steady, base)
    result.ratio("Ray Data, read in the tokenize tasks / one process, thread pool", fused_fig, pooled)
    result.ratio("thread pool / 1 thread", pooled, base)
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
