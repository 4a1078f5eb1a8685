"""Run every benchmark, one fresh process per question, and write the table to BENCHMARKS.md.

    python -m bench.run_all                 # the full run (about 70 minutes on 2 cores) -> BENCHMARKS.md
    python -m bench.run_all --quick         # smoke sizes -> runs/bench/BENCHMARKS-quick.md
    python -m bench.run_all --only 2 4      # measure some questions again, keep the others' last figures
    python -m bench.run_all --render-only   # rewrite BENCHMARKS.md from the last run's results

Each script writes its figures as JSON; this one adds the machine and the durations and renders
them. A full run's JSON lives in ``bench/results/`` (tracked with BENCHMARKS.md, so ``--only`` and
``--render-only`` work from a fresh clone, on the machine that measured them); its logs in the
work folder. ``bench/analysis.md`` (written by hand from profiles, see there) is appended: it explains
the figures that miss their aim, so read it beside the numbers of the same date.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_WORK, REPO, Result, load_result, machine  # noqa: E402

RESULTS = REPO / "bench" / "results"  # the figures behind BENCHMARKS.md

# (key, module, accepts --work-dir/--repeats); the order of BENCHMARKS.md
QUESTIONS = [
    ("1", "bench.tokenization", True),
    ("2", "bench.train_throughput", True),
    ("3", "bench.model_flops", True),
    ("4", "bench.scoring_alternatives", True),
    ("5", "bench.decoding_cache", False),
    ("6", "bench.fixed_costs", True),
]


def fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2e}"


Outcome = tuple[str, Result | None, float, str, str]  # key, result, seconds, error, measured at


def render(results: list[Outcome], info: dict[str, str], quick: bool) -> str:
    lines = ["# Benchmarks: the job system against the alternatives, measured side by side", ""]
    if quick:
        lines += ["**Smoke run (`--quick`): sizes too small for the figures to mean anything.**", ""]
    times = sorted({at for *_, at in results})
    when = times[0] if len(times) == 1 else f"{times[0]} to {times[-1]} (each question's time in its section)"
    total_s = sum(seconds for _, _, seconds, _, _ in results)
    lines += [f"Measured {when} by `make bench` (`python -m bench.run_all`; its scripts ran "
              f"{total_s / 60:.1f} minutes). Every figure is the median of its repetitions (all repetitions in "
              "brackets); every ratio divides two medians measured in the same run of its script, on this "
              "machine:", ""]
    lines += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()] + [""]
    lines += ["## Summary", "", "| Q | comparison (same run, medians) | ratio | aim | |", "|---|---|---|---|---|"]
    for key, result, *_ in results:
        if result is None:
            lines.append(f"| {key} | failed, see below | | | |")
            continue
        for r in result.ratios:
            verdict = "" if r.met is None else ("met" if r.met else "**missed**")
            lines.append(f"| {key} | {r.name} | {r.value:.3f} | {r.aim} | {verdict} |")
    lines.append("")
    for key, result, seconds, error, at in results:
        if result is None:
            lines += [f"## Question {key}: failed after {seconds:.0f} s", "", "```", error[-3000:], "```", ""]
            continue
        ran = f"script ran {seconds:.0f} s" + (f", measured {at}" if len(times) > 1 else "")
        lines += [f"## {result.question}", "", result.setup + f" ({ran}).", "",
                  "| figure | median | unit | repetitions | |", "|---|---|---|---|---|"]
        for f in result.figures:
            reps = ", ".join(fmt(v) for v in f.values)
            lines.append(f"| {f.name} | {fmt(f.median)} | {f.unit} | {reps} | {f.note} |")
        if result.notes:
            lines += [""] + [f"- {note}" for note in result.notes]
        lines.append("")
    analysis = REPO / "bench" / "analysis.md"
    if analysis.is_file():
        lines += [analysis.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes (minutes), written apart")
    parser.add_argument("--only", nargs="+", choices=[q[0] for q in QUESTIONS], help="run these questions only")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK))
    parser.add_argument("--output", help="default: BENCHMARKS.md, or runs/bench/BENCHMARKS-quick.md with --quick")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: render the last run's results again (e.g. after editing analysis.md)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    results_dir = work / "results-quick" if args.quick else RESULTS
    logs_dir = work / ("logs-quick" if args.quick else "logs")
    for folder in (results_dir, logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    output = Path(args.output or (work / "BENCHMARKS-quick.md" if args.quick else REPO / "BENCHMARKS.md"))
    run_file = results_dir / "run.json"  # machine, per-question durations and times: the rest of a rendering
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {"questions": {}}
    if args.render_only:
        if not run_file.is_file():
            parser.error(f"{run_file} does not exist: nothing measured yet to render")
        results = [(key, load_result(results_dir / f"q{key}.json"), q["seconds"], "", q["measured_at"])
                   for key, q in sorted(previous["questions"].items())]
        output.write_text(render(results, previous["machine"], args.quick))
        print(f"wrote {output} from {results_dir}")
        return 0

    info = machine()
    if args.only and previous.get("machine", info) != info:
        parser.error(f"{run_file} was measured on another machine or software: run every question")
    results: list[Outcome] = []
    start_all = time.perf_counter()
    for key, module, common in QUESTIONS:
        if args.only and key not in args.only:
            kept = previous["questions"].get(key)
            if kept and (results_dir / f"q{key}.json").is_file():  # the last run's figures, marked with their time
                results.append((key, load_result(results_dir / f"q{key}.json"), kept["seconds"], "",
                                kept["measured_at"]))
            continue
        measured_at = time.strftime("%Y-%m-%d %H:%M")
        out = results_dir / f"q{key}.json"
        out.unlink(missing_ok=True)
        command = [sys.executable, "-m", module, "--json", str(out)] + (["--quick"] if args.quick else [])
        if common:
            command += ["--work-dir", str(work)]
        print(f"\n##### question {key}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        log = logs_dir / f"q{key}.log"  # Ray and the libraries are chatty: their stderr goes here
        with open(log, "w", encoding="utf-8") as handle:
            done = subprocess.run(command, cwd=REPO, stderr=handle)
        seconds = time.perf_counter() - start
        if done.returncode == 0 and out.is_file():
            results.append((key, load_result(out), seconds, "", measured_at))
        else:
            tail = log.read_text(errors="replace")[-5000:]
            sys.stderr.write(tail)
            results.append((key, None, seconds, f"exit status {done.returncode}; {log}:\n{tail}", measured_at))
        print(f"##### question {key}: {seconds:.0f} s", flush=True)
    total = time.perf_counter() - start_all
    run_file.write_text(json.dumps({"machine": info, "questions": {
        key: {"seconds": s, "measured_at": at} for key, r, s, _, at in results if r is not None}}))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(results, info, args.quick))
    print(f"\nwrote {output} ({total / 60:.1f} minutes)")
    return 0 if all(r is not None for _, r, *_ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
