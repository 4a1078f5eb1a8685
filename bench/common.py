"""Shared pieces of the benchmark scripts: the machine, the inputs they build, timing and results.

Every script builds what it needs under a bench-owned folder (``runs/bench`` by default), never
in ``data/`` or ``artifacts/``, and writes its figures as JSON (``--json``) for ``bench.run_all``,
which turns them into BENCHMARKS.md. A figure is the median of ``repeats`` timings; a ratio
compares two medians measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` works too
    sys.path.insert(0, str(REPO))
DEFAULT_WORK = REPO / "runs" / "bench"
LABELS = ["negative", "positive"]


# --------------------------------------------------------------------------- results


@dataclass
class Figure:
    """One measured quantity: every repetition, summarised by its median."""
    name: str
    unit: str
    values: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


@dataclass
class Ratio:
    name: str
    value: float
    aim: str = ""  # e.g. ">= 1.8"; empty: reported, no aim
    met: bool | None = None


@dataclass
class Result:
    question: str
    setup: str
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, name: str, unit: str, values: Sequence[float], note: str = "") -> Figure:
        fig = Figure(name, unit, [float(v) for v in values], note)
        self.figures.append(fig)
        return fig

    def ratio(self, name: str, numerator: Figure | float, denominator: Figure | float,
              aim: float | None = None, aim_text: str = "") -> Ratio:
        top = numerator.median if isinstance(numerator, Figure) else numerator
        bottom = denominator.median if isinstance(denominator, Figure) else denominator
        value = top / bottom if bottom else float("nan")
        ratio = Ratio(name, value, aim_text or (f">= {aim:g}" if aim is not None else ""),
                      None if aim is None else value >= aim)
        self.ratios.append(ratio)
        return ratio

    def print(self) -> None:
        print(f"\n=== {self.question} ===\n{self.setup}")
        for f in self.figures:
            print(f"  {f.name:58s} {f.median:12.4g} {f.unit:10s} ({', '.join(f'{v:.4g}' for v in f.values)})"
                  + (f"  {f.note}" if f.note else ""))
        for r in self.ratios:
            verdict = "" if r.met is None else ("  aim met" if r.met else "  AIM MISSED")
            print(f"  ratio {r.name:52s} {r.value:8.3f} {r.aim}{verdict}")
        for note in self.notes:
            print(f"  note: {note}")

    def write(self, path: str | None) -> None:
        self.print()
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False))


def load_result(path: Path) -> Result:
    raw = json.loads(path.read_text())
    return Result(question=raw["question"], setup=raw["setup"], figures=[Figure(**f) for f in raw["figures"]],
                  ratios=[Ratio(**r) for r in raw["ratios"]], notes=raw.get("notes", []))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    import psutil

    model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for name in ("torch", "ray", "transformers", "tokenizers", "mlflow", "accelerate"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    simd = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or "none listed"
    return {"cores": str(os.cpu_count()), "usable cores": str(len(os.sched_getaffinity(0))),
            "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB", "cpu": model, "simd": simd,
            "os": platform.platform(), "python": platform.python_version(), **versions}


# --------------------------------------------------------------------------- inputs


def bench_env(work: Path) -> None:
    """Quiet, self-contained runs: MLflow in the bench folder, tokenizer threads off unless asked for."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work.resolve() / 'mlflow.db'}"
    work.mkdir(parents=True, exist_ok=True)


def corpus_dir(work: Path) -> Path:
    """The review corpus (train/val/test Parquet with label metadata), built once per bench folder."""
    out = work / "corpus"
    if not (out / "test.parquet").is_file():
        from jobs.corpus.prepare import PrepareCorpusConfig, Seq2SeqCorpusSettings, run

        run(PrepareCorpusConfig(output_dir=str(out), log_to_mlflow=False,
                                seq2seq=Seq2SeqCorpusSettings(enabled=False)))
    return out


def review_texts(work: Path, split: str = "train") -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(corpus_dir(work) / f"{split}.parquet", columns=["text"]).column("text").to_pylist()


def minirbt_dir(work: Path) -> Path:
    """MiniRBT-H256 with random weights and the bert-base-chinese vocabulary (configs/model/minirbt-h256.json)."""
    out = work / "minirbt-h256-random"
    if not (out / "config.json").is_file():
        from model.classifier import build_random_classifier

        build_random_classifier(REPO / "configs/model/minirbt-h256.json", LABELS, out)
    return out


def repeated_corpus(work: Path, rows: int, rows_per_file: int, texts: list[str] | None = None) -> Path:
    """``rows`` review texts (the train split cycled, unique ids) as Parquet files; reused when present."""
    from bench.scoring_memory import write_corpus

    folder = work / f"reviews-{rows}"
    marker = folder / "_COMPLETE"
    if not marker.is_file():
        write_corpus(texts or review_texts(work), rows, folder, rows_per_file)
        marker.write_text(str(rows))
    return folder


def common_args(parser, repeats: int) -> None:
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions; figures are medians")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK), help="bench-owned folder for inputs and runs")
    parser.add_argument("--json", help="write the results here (read by bench.run_all)")
