"""Peak memory and rows/s of the whole batch scoring job as the corpus grows (streaming check).

    python -m bench.scoring_memory                               # tiny: 2,000 rows, debug-size model
    python -m bench.scoring_memory --rows 200000 2000000         # the issue's sizes (minutes to hours on 2 cores)
    python -m bench.scoring_memory --rows 20000 --model-config configs/model/minirbt-h256.json

For each size it writes a corpus (the review corpus repeated, unique ids, files of
``--rows-per-file`` rows), runs ``jobs.batch_infer`` on it (local Ray started by this process,
a throwaway MLflow store) and samples, every ``--sample-s`` seconds, the memory of the whole
job: this process plus every process it started (GCS, raylet, Ray workers and actors) - RSS
and PSS (PSS splits shared pages, such as the plasma object store, between the processes that
map them, so the sum is not inflated). Streaming means the peak stays roughly flat as rows grow:
the last line prints peak(largest) / peak(smallest). The baseline, measured in the same run, is a
plain single-process loop (``model.classifier.classify_texts``) over ``--baseline-rows`` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


class TreeMemory:
    """Samples the summed RSS / PSS of a process and all its descendants in a thread.

    RSS (``/proc/<pid>/statm``) is cheap and read every ``interval_s``; PSS needs the kernel to
    walk every mapping (``smaps_rollup``), which for Ray's processes, each mapping the object
    store, cost the sampling thread about a fifth of a core at 5 samples/s - CPU taken from the
    job it measures - so it is read only every ``pss_interval_s``.
    """

    def __init__(self, pid: int, interval_s: float, pss_interval_s: float | None = None):
        import psutil

        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.pss_every = max(1, round((pss_interval_s or interval_s) / interval_s))
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, with_pss: bool = True) -> tuple[int, int, int]:
        import psutil

        rss = pss = count = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                if with_pss:
                    info = proc.memory_full_info()  # reads smaps: gives PSS
                    pss += getattr(info, "pss", info.rss)
                else:
                    info = proc.memory_info()
                rss += info.rss
                count += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return rss, pss, count

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            with_pss = tick % self.pss_every == 0
            rss, pss, count = self.sample(with_pss)
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, count)
            tick += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_corpus(texts: list[str], rows: int, folder: Path, rows_per_file: int) -> None:
    """``rows`` rows cycling through ``texts``, written file by file (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        ids = [f"r{start + i:09d}" for i in range(n)]
        pq.write_table(pa.table({"id": ids, "text": [texts[(start + i) % len(texts)] for i in range(n)]}),
                       folder / f"part-{index:05d}.parquet", row_group_size=65_536)


def source_texts(work: Path, corpus: str | None) -> list[str]:
    import pyarrow.parquet as pq

    if corpus:
        return pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    from jobs.corpus.prepare import PrepareCorpusConfig, SplitSettings, run

    out = work / "corpus"
    run(PrepareCorpusConfig(split=SplitSettings(limit_per_label=500), output_dir=str(out), log_to_mlflow=False))
    return pq.read_table(out / "train.parquet", columns=["text"]).column("text").to_pylist()


def baseline_rows_per_s(model_dir: Path, texts: list[str], rows: int, max_length: int) -> float:
    import torch

    from model.classifier import classify_texts, load_classifier

    torch.set_num_threads(1)
    loaded = load_classifier(str(model_dir))
    sample = [texts[i % len(texts)] for i in range(rows)]
    start = time.perf_counter()
    classify_texts(loaded, sample, batch_size=64, max_length=max_length)
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000], help="corpus sizes to score")
    parser.add_argument("--model-config", default=str(REPO / "configs/model/bert-debug.json"),
                        help="BERT config of the random model (configs/model/minirbt-h256.json for MiniRBT)")
    parser.add_argument("--model-dir", help="score with this model directory instead of a random one")
    parser.add_argument("--corpus", help="Parquet with a 'text' column; default: a slice of the review corpus")
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=1000)
    parser.add_argument("--config", default=str(REPO / "configs/batch_infer.local-cpu.yaml"),
                        help="batch_infer config for the stages and predictor settings")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--work-dir", help="where corpora and outputs go (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-scoring-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"

    from jobs.common import config as config_lib
    from jobs.scoring.batch import BatchInferConfig, run
    from jobs.common.tracking import TrackingConfig

    texts = source_texts(work, args.corpus)
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        from model.classifier import build_random_classifier

        model_dir = build_random_classifier(Path(args.model_config), ["negative", "positive"], work / "model")
    base = config_lib.load(BatchInferConfig, args.config)
    baseline = baseline_rows_per_s(model_dir, texts, args.baseline_rows, base.max_length)
    print(f"baseline: one process, one thread, {args.baseline_rows} rows: {baseline:.0f} rows/s", flush=True)

    import ray

    results = []
    for rows in args.rows:
        folder = work / f"input-{rows}"
        write_corpus(texts, rows, folder, args.rows_per_file)
        config = config_lib.build(BatchInferConfig, {
            **config_lib.to_dict(base), "input": {**config_lib.to_dict(base.input), "path": str(folder)},
            "output_dir": str(work / "scores"),
            "model": str(model_dir), "tracking": config_lib.to_dict(TrackingConfig(experiment="bench-scoring")),
            "run_name": f"bench-{rows}", "replace": True})
        with TreeMemory(os.getpid(), args.sample_s) as memory:
            outcome = run(config)  # starts a local Ray as a child of this process
        ray.shutdown()
        result = {"rows": rows, "rows_per_s": outcome.rows_per_s, "seconds": outcome.seconds,
                  "peak_rss_mib": memory.peak_rss / 2**20, "peak_pss_mib": memory.peak_pss / 2**20,
                  "processes": memory.peak_processes, "vs_baseline": outcome.rows_per_s / baseline}
        results.append(result)
        print(f"{rows:>9,} rows: {result['rows_per_s']:8.0f} rows/s ({result['vs_baseline']:.2f}x the baseline), "
              f"peak PSS {result['peak_pss_mib']:7.0f} MiB, RSS {result['peak_rss_mib']:7.0f} MiB "
              f"over {result['processes']} processes", flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(f"peak PSS at {last['rows']:,} rows / at {first['rows']:,} rows: "
              f"{last['peak_pss_mib'] / first['peak_pss_mib']:.2f} ({last['rows'] / first['rows']:.0f}x the rows)")
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline_rows_per_s": baseline, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
