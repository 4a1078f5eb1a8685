"""Question 6: fixed costs, what the jobs pay for Ray rather than for work, beside a plain process.

    python -m bench.fixed_costs            # training: 768 rows x 2 epochs; scoring: 1,736 and 20,000 rows
    python -m bench.fixed_costs --quick    # 256 rows x 1 epoch; 500 and 2,000 rows (smoke run)

Measured in one run of this script, each part in fresh processes, on an otherwise idle machine:

* training (``bench.train_throughput``, its paths described there): the plain loop (one process, all
  cores) and plain DDP (two processes x one thread), then the Ray Train job with one worker (all
  cores) and two workers (one thread each), then both plain paths again beside the idle Ray the
  job left: the idle-Ray tax. Steady samples/s, wall time, and the time from a run's start to its
  first optimiser step (for the job: its ``run()`` in an already started Ray; ``ray.init`` apart).
* the first step, taken apart (``bench.first_step``): the demo's fine-tune from launch to its first
  optimiser step, the seconds of each phase and the CPU seconds of every process by role.
* scoring (``bench.scoring_alternatives``' job and hand loop, each in a fresh process): the
  batch_infer job (its local Ray started beforehand, timed apart) and the hand-written
  ``classify_texts`` loop (model load included) on the same rows at two sizes. The fixed cost is
  the intercept ``a`` of wall = a + rows / rate through the two sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Result, bench_env, common_args, load_result  # noqa: E402

TRAIN_PATHS = ("plain1", "plain2", "ray1", "ray2", "plain1_ray_idle", "plain2_ray_idle")
SCORING_METHODS = {"ray": "batch_infer job, 2 actors x 1 thread", "loop": "hand loop (classify_texts), all cores"}


def training(work: Path, rows: int, epochs: int) -> Result:
    out = work / "fixed-costs-training.json"
    subprocess.run([sys.executable, "-m", "bench.train_throughput", "--paths", *TRAIN_PATHS, "--rows", str(rows),
                    "--repeats", str(epochs), "--work-dir", str(work), "--json", str(out)], check=True, cwd=REPO)
    return load_result(out)


def first_step(work: Path, repeats: int) -> Result:
    out = work / "fixed-costs-first-step.json"
    subprocess.run([sys.executable, "-m", "bench.first_step", "--repeats", str(repeats), "--work-dir", str(work),
                    "--json", str(out)], check=True, cwd=REPO)
    return load_result(out)


def scoring(work: Path, method: str, rows: int) -> dict:
    out = work / f"fixed-costs-scoring-{method}-{rows}.json"
    subprocess.run([sys.executable, "-m", "bench.scoring_alternatives", "--child", method, "--child-out", str(out),
                    "--rows", str(rows), "--repeats", "1", "--work-dir", str(work), "--finetune-steps", "0"],
                   check=True, cwd=REPO)
    return json.loads(out.read_text())


def intercept(small: tuple[int, float], large: tuple[int, float]) -> float:
    """``a`` of wall = a + rows / rate through two (rows, wall) points."""
    (n1, w1), (n2, w2) = small, large
    return (w1 * n2 - w2 * n1) / (n2 - n1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=2)
    parser.add_argument("--rows", type=int, default=768, help="training rows")
    parser.add_argument("--scoring-rows", type=int, nargs=2, default=[1_736, 20_000], help="the two scoring sizes")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.scoring_rows = 256, 1, [500, 2_000]
    work = Path(args.work_dir).resolve()
    bench_env(work)
    small, large = sorted(args.scoring_rows)

    trained = training(work, args.rows, args.repeats)
    result = Result(question="6. Fixed costs: Ray's start-up and overhead against plain processes",
                    setup=(f"training: {trained.setup}; scoring: {small:,} and {large:,} review texts, one run "
                           "per size and path, each path in a fresh process"))
    wanted = ("steady", "wall time", "first training step", "ray.init")
    result.figures += [f for f in trained.figures if f.unit != "tokens/s" and any(w in f.name for w in wanted)]
    result.ratios += [r for r in trained.ratios if "idle Ray" in r.name or "/ 2-process plain DDP" in r.name
                      or "/ 1 plain process," in r.name]
    first = {f.name.split(":")[0]: f for f in trained.figures if "first training step" in f.name}
    ray2 = next((f for name, f in first.items() if name.startswith("Ray Train job, 2 workers")), None)
    plain2 = next((f for name, f in first.items() if name.startswith("plain PyTorch DDP, 2 processes")
                   and "idle" not in name), None)
    if ray2 and plain2:
        result.ratio("2 Ray Train workers / plain DDP, start to first step (lower is better)", ray2, plain2)

    taken_apart = first_step(work, args.repeats)
    for figure in taken_apart.figures:
        figure.name = f"demo fine-tune, first step taken apart: {figure.name}"
    result.figures += taken_apart.figures
    result.notes += taken_apart.notes

    walls: dict[str, list[tuple[int, float]]] = {}
    for rows in (small, large):
        for method, label in SCORING_METHODS.items():
            measured = scoring(work, method, rows)
            walls.setdefault(method, []).append((rows, measured["wall_s"][0]))
            result.figure(f"{label}, {rows:,} rows: wall time", "s", measured["wall_s"])
            result.figure(f"{label}, {rows:,} rows: scoring rate", "rows/s", measured["rows_per_s"])
            if "ray_init_s" in measured:
                result.figure(f"{label}, {rows:,} rows: its ray.init (before the wall time)", "s",
                              [measured["ray_init_s"]])
            print(f"scoring {method} {rows}: {measured}", flush=True)
    for method, label in SCORING_METHODS.items():
        result.figure(f"{label}: fixed cost (intercept of wall time over the two sizes)", "s",
                      [intercept(*walls[method])])
    job, loop = dict(walls["ray"]), dict(walls["loop"])
    for rows in (small, large):
        result.ratio(f"batch_infer / hand loop, wall time on {rows:,} rows (lower is better)", job[rows], loop[rows])
    result.notes.append("The job's scoring rate is its own pipeline's (read to last file written); the hand loop's "
                        "counts scoring after the model is loaded. The job's wall time excludes its ray.init "
                        "(figure apart); the hand loop's includes loading the model.")
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
