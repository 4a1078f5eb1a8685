"""Where a fine-tuning job's time goes before its first optimiser step: phases, and CPU per process.

    python -m bench.first_step               # 3 runs of the demo's fine-tune, each in a fresh process
    python -m bench.first_step --quick       # 1 run

Each run is ``python -m jobs.finetune_classifier`` with the demo's config (local Ray, 2 workers of
0.5 CPU, the whole train split) stopped after one step, its evaluation splits cut to 64 rows so
that it ends soon after; run alone, on an otherwise idle machine. From the job's own output, the
time since launch at which each phase ends (Ray's and Ray Train's log lines, then the job's first
step); and at that first step, the CPU seconds every process started since launch has used, by
role. On a machine with few cores the wall time to the first step is bounded below by that CPU
time divided by the cores: the role table says what to cut.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Result, bench_env, common_args, corpus_dir, minirbt_dir  # noqa: E402
from bench.train_throughput import subset  # noqa: E402

# (phase, the line that ends it): Ray's and Ray Train's messages, then the job's own step log
PHASES = (("imports, inputs checked, local Ray started", r"Started a local Ray instance"),
          ("MLflow run, datasets planned, Train controller started", r"Requesting resources"),
          ("placement group", r"Attempting to start training worker group"),
          ("worker processes started", r"Setting up process group"),
          ("process group", r"Started training worker group"),
          ("model built, wrapped in DDP", r"Moving model to device"),
          ("first batch and step", r"\[train\] epoch 0 step 1/"))
FIRST_STEP = PHASES[-1][1]
DAEMONS = ("gcs_server", "raylet", "dashboard", "monitor.py", "log_monitor", "Agent")
HELPERS = ("TrainController", "PlacementGroupCleaner", "SynchronizationActor", "AutoscalingCoordinator",
           "DatasetManager", "SplitCoordinator", "StatsActor")


def role(pid: int, job_pid: int, name: str) -> str:
    """What a process is to the job, from its title (Ray names a worker process after its actor or task)."""
    if pid == job_pid:
        return "the job's driver"
    if "RayTrainWorker" in name:
        return "training workers"
    helper = next((h for h in HELPERS if h in name), None)
    if helper:
        return f"Ray helper: {helper}"
    if any(d in name for d in DAEMONS):
        return "Ray daemons (GCS, raylet, agents, monitors)"
    return "other Ray workers (tasks: read, tokenize; idle)"


class CpuSampler:
    """CPU seconds of every process started since ``since``, sampled until ``stop``."""

    def __init__(self, since: float, job_pid: int):
        self.since, self.job_pid = since, job_pid
        self.seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for process in psutil.process_iter(["pid", "cmdline", "create_time", "cpu_times"]):
                info = process.info
                if not info["create_time"] or info["create_time"] < self.since - 0.5 or not info["cpu_times"]:
                    continue
                name = " ".join(info["cmdline"] or [])[:200]
                self.seen[info["pid"]] = (name, info["cpu_times"].user + info["cpu_times"].system)
            self._stop.wait(0.2)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        by_role: dict[str, float] = {}
        for pid, (name, cpu) in self.seen.items():
            key = role(pid, self.job_pid, name)
            by_role[key] = by_role.get(key, 0.0) + cpu
        return by_role


def job_overrides(work: Path) -> dict[str, object]:
    """The demo's fine-tune on the bench's inputs (built once), one step, 64-row evaluation splits."""
    _, tiny = subset(work, 64)
    return {"data.train": corpus_dir(work) / "train.parquet", "data.val": tiny, "data.test": tiny,
            "model.name_or_path": minirbt_dir(work).resolve(), "run.storage_path": work / "first-step-runs",
            "optim.max_steps": 1, "optim.log_every_steps": 1, "baselines": "false",
            "tracking.registered_model": "null", "tracking.experiment": "bench-first-step"}


def one_run(work: Path, overrides: dict[str, object], index: int,
            named: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(the time since launch each phase ended, CPU seconds by role at the first step) of one run."""
    if named:
        overrides = {**overrides, "run.name": f"first-step-{int(time.time())}-{index}"}
    command = [sys.executable, "-u", "-m", "jobs.finetune_classifier", "--config",
               "configs/finetune_classifier.local-cpu.yaml"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    start = time.time()
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = CpuSampler(start, job.pid)
    ended: dict[str, float] = {}
    cpu: dict[str, float] = {}
    log_path = work / f"first-step-{index}.log"
    with log_path.open("w") as log:
        for line in job.stdout:
            log.write(line)
            for phase, pattern in PHASES:
                if phase not in ended and re.search(pattern, line):
                    ended[phase] = time.time() - start
            if not cpu and re.search(FIRST_STEP, line):
                cpu = sampler.stop()
    if job.wait() != 0 or not cpu:
        sampler.stop()
        raise SystemExit(f"the fine-tune exited {job.returncode}{'' if cpu else ' before its first step'}: "
                         f"see {log_path}")
    return ended, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, repeats=3)
    parser.add_argument("--named", action="store_true", help="give each run a run.name (its claim is verified)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    work = Path(args.work_dir).resolve()
    bench_env(work)
    overrides = job_overrides(work)
    runs = [one_run(work, overrides, index, args.named) for index in range(args.repeats)]
    result = Result(question="Time to the first training step, by phase and by process",
                    setup=(f"jobs.finetune_classifier, configs/finetune_classifier.local-cpu.yaml (2 workers x "
                           f"0.5 CPU, the whole train split), {'named' if args.named else 'unnamed'} run, one step, "
                           f"{args.repeats} run(s), each a fresh process"))
    previous = [0.0] * len(runs)
    for phase, _ in PHASES:
        ends = [ended.get(phase) for ended, _ in runs]
        if None in ends:
            result.notes.append(f"no line marked the end of '{phase}' (Ray's messages changed?)")
            continue
        result.figure(f"{phase}: seconds", "s", [end - before for end, before in zip(ends, previous)])
        previous = ends
    result.figure("launch to first step", "s", previous)
    roles = sorted({key for _, cpu in runs for key in cpu})
    for key in roles:
        result.figure(f"CPU at the first step: {key}", "CPU s", [cpu.get(key, 0.0) for _, cpu in runs])
    totals = [sum(cpu.values()) for _, cpu in runs]
    result.figure("CPU at the first step: all processes", "CPU s", totals)
    result.figure("busy cores, launch to first step (CPU / wall)", "cores",
                  [total / wall for total, wall in zip(totals, previous)])
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
