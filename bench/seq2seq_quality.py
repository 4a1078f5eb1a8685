"""Chinese -> pinyin quality on the held-out test split, per source: the model beside two baselines.

    python -m bench.seq2seq_quality --config configs/train_seq2seq.local-cpu.yaml      # train, then measure
    python -m bench.seq2seq_quality --model-dir runs/ray/<run>/<checkpoint>/model      # measure a trained export

Prints a markdown table, per source (the test rows' ``corpus`` column: reviews, news, a user's
name) and in total, for the same test rows in one run: syllable accuracy, accuracy on polyphonic
characters (characters seen with more than one reading in train) and exact-sentence match of the
model (greedy, and beam search with ``--beam N``), of the per-character baseline (every character
with its most frequent train reading) and of pypinyin run character by character, without its
phrase dictionary. The references are pypinyin with its phrases. ``--json PATH`` writes the figures.
Metric definitions: data_pipeline/pinyin.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/seq2seq_quality.py` works too


def _pairs(path: str, data) -> list[tuple[str, str]]:
    from data_pipeline.paths import resolve_parquet_files
    from jobs.train.seq2seq import read_pairs

    return read_pairs(resolve_parquet_files(path), data)


def _corpus_names(path: str, rows: int) -> list[str]:
    """Each test row's ``corpus`` (the source prepare_corpus took it from); "all" for files without one."""
    import pyarrow.parquet as pq

    from data_pipeline.paths import resolve_parquet_files

    files = resolve_parquet_files(path)
    names: list[str] = []
    for file in files.paths:
        with files.filesystem.open_input_file(file) as handle:
            parquet = pq.ParquetFile(handle)
            if "corpus" in parquet.schema_arrow.names:
                names.extend(parquet.read(columns=["corpus"]).column("corpus").to_pylist())
            else:
                names.extend(["all"] * parquet.metadata.num_rows)
    if len(names) != rows:
        raise ValueError(f"{path}: {len(names)} corpus values for {rows} rows")
    return names


def per_source(names: list[str], sources, references, predictions, polyphonic) -> dict[str, object]:
    """Scores per corpus value, then "total" over all rows."""
    from data_pipeline.pinyin import score

    out = {}
    for name in sorted(set(names)):
        keep = [i for i, n in enumerate(names) if n == name]
        out[name] = score([sources[i] for i in keep], [references[i] for i in keep],
                          [predictions[i] for i in keep], polyphonic)
    if len(out) > 1:
        out["total"] = score(sources, references, predictions, polyphonic)
    return out


def markdown_table(results: dict[str, dict[str, object]]) -> list[str]:
    """One row per (source, method): syllable, polyphonic and exact-match accuracy, in percent."""
    lines = ["| source | sentences / syllables / polyphonic | method | syllable | polyphonic | exact match |",
             "|---|---|---|---:|---:|---:|"]
    methods = list(results)
    for corpus in results[methods[0]]:
        first = results[methods[0]][corpus]
        size = f"{first.rows} / {first.syllables} / {first.polyphonic}"
        for k, method in enumerate(methods):
            r = results[method][corpus].rates()
            lines.append(f"| {corpus if k == 0 else ''} | {size if k == 0 else ''} | {method} | "
                         f"{100 * r['syllable_accuracy']:.2f}% | {100 * r['polyphonic_accuracy']:.2f}% | "
                         f"{100 * r['exact_match']:.2f}% |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train_seq2seq.local-cpu.yaml",
                        help="training config: trains first (unless --model-dir), and names the data splits")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for the job")
    parser.add_argument("--model-dir", help="a trained export (model.safetensors + tokenizers): skip training")
    parser.add_argument("--beam", type=int, default=0, help="also decode with beam search of this size")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test rows (smoke runs)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures (per source and method) as JSON")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for decoding")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import torch

    from data_pipeline.pinyin import ReadingTable, char_by_char_pinyin, score
    from jobs.common import config as config_lib
    from jobs.train.seq2seq import Seq2SeqTrainConfig
    from model.seq2seq_io import generate_tokens, load_seq2seq

    config = config_lib.load(Seq2SeqTrainConfig, args.config, args.overrides)
    train_seconds = None
    throughput = None
    if args.model_dir is None:
        from jobs.train.seq2seq import report, run

        start = time.perf_counter()
        outcome = run(config)
        train_seconds = time.perf_counter() - start
        report(outcome, config)
        model_dir = outcome.model_dir
        throughput = outcome.metrics.get("train_tokens_per_s")
    else:
        model_dir = args.model_dir

    torch.set_num_threads(args.threads)
    train, test = _pairs(config.data.train, config.data), _pairs(config.data.test, config.data)
    names = _corpus_names(config.data.test, len(test))
    if args.limit:
        test, names = test[:args.limit], names[:args.limit]
    sources = [s for s, _ in test]
    references = [t.split() for _, t in test]
    table = ReadingTable.fit(train)
    polyphonic = table.polyphonic()

    predictions: dict[str, list[list[str]]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    predictions["per-character baseline"] = [table.predict(s) for s in sources]
    seconds["per-character baseline"] = time.perf_counter() - start
    start = time.perf_counter()
    predictions["pypinyin char by char"] = [char_by_char_pinyin(s) for s in sources]
    seconds["pypinyin char by char"] = time.perf_counter() - start
    loaded = load_seq2seq(model_dir)
    for beam in [1] + ([args.beam] if args.beam > 1 else []):
        name = "model, greedy" if beam == 1 else f"model, beam {beam}"
        start = time.perf_counter()
        predictions[name] = generate_tokens(loaded, sources, beam_size=beam, batch_size=128)
        seconds[name] = time.perf_counter() - start
    results = {method: per_source(names, sources, references, predicted, polyphonic)
               for method, predicted in predictions.items()}

    total = score(sources, references, predictions["model, greedy"], polyphonic)
    print(f"\n=== Chinese -> pinyin, test split: {total.rows} sentences, {total.syllables} syllables, "
          f"{total.polyphonic} on {len(polyphonic)} polyphonic characters (references: pypinyin, phrase-aware) ===")
    print(f"model: {model_dir}")
    print("\n".join(markdown_table(results)))
    print("seconds to predict the test split: " + ", ".join(f"{m} {t:.1f}" for m, t in seconds.items()))
    beaten = []
    for corpus, model_scores in results["model, greedy"].items():
        base, model = results["per-character baseline"][corpus].rates(), model_scores.rates()
        gains = {k: model[k] - base[k] for k in ("syllable_accuracy", "polyphonic_accuracy", "exact_match")}
        beaten.append(gains["syllable_accuracy"] > 0 and gains["polyphonic_accuracy"] > 0)
        print(f"model - baseline, {corpus}: syllable {gains['syllable_accuracy']:+.4f}, "
              f"polyphonic {gains['polyphonic_accuracy']:+.4f}, exact {gains['exact_match']:+.4f}")
    print("model beats the per-character baseline on every source (syllable and polyphonic): "
          f"{'yes' if all(beaten) else 'NO'}")
    if train_seconds is not None:
        print(f"training run: {train_seconds:.0f} s wall, {throughput or float('nan'):.0f} target tokens/s "
              f"({config.scaling.num_workers} workers, last epoch)")
    if args.json:
        figures = {"date": time.strftime("%Y-%m-%d"), "model_dir": str(model_dir), "config": args.config,
                   "overrides": args.overrides, "train_seconds": train_seconds,
                   "polyphonic_characters": len(polyphonic), "predict_seconds": seconds,
                   "results": {method: {corpus: {**s.as_counts(), **s.rates()} for corpus, s in by_corpus.items()}
                               for method, by_corpus in results.items()}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
