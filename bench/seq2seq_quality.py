"""Chinese -> pinyin quality on the held-out test split: the model beside the per-character baseline.

    python -m bench.seq2seq_quality --config configs/train_seq2seq.local-cpu.yaml      # train, then measure
    python -m bench.seq2seq_quality --model-dir runs/ray/<run>/<checkpoint>/model      # measure a trained export

Prints, for the same test rows in one run: syllable accuracy, accuracy on polyphonic characters
(characters seen with more than one reading in train), token accuracy and exact-sentence match of
the model (greedy, and beam search with ``--beam N``) and of the baseline that reads every
character with its most frequent train reading. Metric definitions: data_pipeline/pinyin.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/seq2seq_quality.py` works too


def _pairs(path: str, data) -> list[tuple[str, str]]:
    from data_pipeline.paths import resolve_parquet_files
    from jobs.train_seq2seq import read_pairs

    return read_pairs(resolve_parquet_files(path), data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train_seq2seq.local-cpu.yaml",
                        help="training config: trains first (unless --model-dir), and names the data splits")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for the job")
    parser.add_argument("--model-dir", help="a trained export (model.safetensors + tokenizers): skip training")
    parser.add_argument("--beam", type=int, default=0, help="also decode with beam search of this size")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test rows (smoke runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for decoding")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import torch

    from data_pipeline.pinyin import ReadingTable, score
    from jobs.common import config as config_lib
    from jobs.train_seq2seq import Seq2SeqTrainConfig
    from model.seq2seq_io import generate_tokens, load_seq2seq

    config = config_lib.load(Seq2SeqTrainConfig, args.config, args.overrides)
    train_seconds = None
    throughput = None
    if args.model_dir is None:
        from jobs.train_seq2seq import report, run

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
    if args.limit:
        test = test[:args.limit]
    sources = [s for s, _ in test]
    references = [t.split() for _, t in test]
    table = ReadingTable.fit(train)
    polyphonic = table.polyphonic()

    rows: list[tuple[str, object, float | None]] = []
    start = time.perf_counter()
    rows.append(("per-character baseline", score(sources, references, [table.predict(s) for s in sources],
                                                 polyphonic), time.perf_counter() - start))
    loaded = load_seq2seq(model_dir)
    for beam in [1] + ([args.beam] if args.beam > 1 else []):
        start = time.perf_counter()
        predicted = generate_tokens(loaded, sources, beam_size=beam, batch_size=128)
        name = "model, greedy" if beam == 1 else f"model, beam {beam}"
        rows.append((name, score(sources, references, predicted, polyphonic), time.perf_counter() - start))

    first = rows[1][1]
    print(f"\n=== Chinese -> pinyin, test split: {first.rows} sentences, {first.syllables} syllables, "
          f"{first.polyphonic} on {len(polyphonic)} polyphonic characters ===")
    print(f"model: {model_dir}")
    print(f"{'':24s} {'syllable':>9s} {'polyphonic':>10s} {'token':>8s} {'exact':>8s} {'seconds':>8s}")
    for name, s, seconds in rows:
        r = s.rates()
        print(f"{name:24s} {r['syllable_accuracy']:9.4f} {r['polyphonic_accuracy']:10.4f} "
              f"{r['token_accuracy']:8.4f} {r['exact_match']:8.4f} {seconds:8.1f}")
    base, model = rows[0][1].rates(), rows[1][1].rates()
    print(f"model - baseline (greedy): syllable {model['syllable_accuracy'] - base['syllable_accuracy']:+.4f}, "
          f"polyphonic {model['polyphonic_accuracy'] - base['polyphonic_accuracy']:+.4f}, "
          f"exact {model['exact_match'] - base['exact_match']:+.4f}")
    print(f"polyphonic errors, model / baseline: "
          f"{(1 - model['polyphonic_accuracy']) / max(1 - base['polyphonic_accuracy'], 1e-12):.3f}")
    if train_seconds is not None:
        print(f"training run: {train_seconds:.0f} s wall, {throughput or float('nan'):.0f} target tokens/s "
              f"({config.scaling.num_workers} workers, last epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
