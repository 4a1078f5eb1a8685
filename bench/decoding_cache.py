"""Greedy decoding throughput with the decoder's key/value cache against recomputing every prefix.

    python -m bench.decoding_cache                                  # random model of the local-cpu size
    python -m bench.decoding_cache --model-dir <export dir> --data data/pinyin/test.parquet

Both paths decode the same sources with the same model and must produce the same tokens (checked);
tokens/s counts generated tokens (eos included), each path the median of ``--repeats`` timings.
``--json`` writes the figures for ``bench.run_all`` (question 5 of BENCHMARKS.md). With a random model
the eos logit is suppressed so every row decodes ``--max-len`` tokens; a trained model stops at its own eos.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a trained export; default: a random model (--d-model, --layers)")
    parser.add_argument("--data", default=None, help="Parquet with a 'source' column (with --model-dir)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--src-len", type=int, default=24, help="source length of the random inputs")
    parser.add_argument("--max-len", type=int, default=32, help="most tokens generated per row")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (random model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timings per path; the median is reported")
    parser.add_argument("--quick", action="store_true", help="fewer rows (smoke run)")
    parser.add_argument("--json", help="also write the results here (read by bench.run_all)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 64)

    import statistics

    import torch

    from model.decoding import greedy_decode
    from model.transformer import Seq2SeqConfig, Seq2SeqTransformer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model_dir:
        import pyarrow.parquet as pq

        from model.seq2seq_io import encode_sources, load_seq2seq

        loaded = load_seq2seq(args.model_dir)
        model = loaded.model
        if not args.data:
            parser.error("--data is required with --model-dir")
        texts = pq.read_table(args.data, columns=["source"]).column("source").to_pylist()[:args.rows]
        texts.sort(key=len)
        batches = [encode_sources(loaded.source_tokenizer, texts[i:i + args.batch_size], model.config.pad_id,
                                  model.config.max_len) for i in range(0, len(texts), args.batch_size)]
        label = f"trained model {args.model_dir}"
    else:
        cfg = Seq2SeqConfig(src_vocab_size=4400, tgt_vocab_size=1300, d_model=args.d_model, n_heads=4,
                            d_ff=4 * args.d_model, n_encoder_layers=args.layers, n_decoder_layers=args.layers,
                            max_len=max(64, args.max_len, args.src_len), dropout=0.0)
        model = Seq2SeqTransformer(cfg).eval()
        with torch.no_grad():
            model.output_proj.bias[cfg.eos_id] = -1e4  # never stop early: every row decodes max_len tokens
        batches = [torch.randint(4, cfg.src_vocab_size, (min(args.batch_size, args.rows - i), args.src_len))
                   for i in range(0, args.rows, args.batch_size)]
        label = f"random model d_model={args.d_model}, {args.layers}+{args.layers} layers"
    max_len = min(args.max_len, model.config.max_len)

    def run(use_cache: bool) -> tuple[list[float], int, list[torch.Tensor]]:
        seconds, outputs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs = [greedy_decode(model, src, max_len=max_len, use_cache=use_cache) for src in batches]
            seconds.append(time.perf_counter() - start)
        tokens = sum(int((out != model.config.pad_id).sum()) for out in outputs)
        return seconds, tokens, outputs

    cached_times, tokens, cached = run(True)
    full_times, full_tokens, full = run(False)
    cached_s, full_s = statistics.median(cached_times), statistics.median(full_times)
    same = tokens == full_tokens and all(torch.equal(a, b) for a, b in zip(cached, full))
    rows = sum(b.size(0) for b in batches)
    print(f"=== greedy decoding, {label}: {rows} rows, batch {args.batch_size}, max_len {max_len}, "
          f"{args.threads} thread(s), median of {args.repeats} ===")
    print(f"KV cache     : {tokens / cached_s:9.0f} tokens/s ({cached_s:.2f} s)")
    print(f"no cache     : {full_tokens / full_s:9.0f} tokens/s ({full_s:.2f} s)")
    print(f"speed-up     : {full_s / cached_s:.2f}x   identical outputs: {same}")
    if args.json:
        from bench.common import Result

        result = Result(question="5. Decoding (greedy, scratch Transformer)",
                        setup=(f"{label}: {rows} rows, batch {args.batch_size}, source {args.src_len} tokens, "
                               f"{max_len} tokens generated per row, {args.threads} thread(s)"))
        with_cache = result.figure("greedy with KV cache", "tokens/s", [tokens / s for s in cached_times])
        without = result.figure("greedy, decoder recomputed every step", "tokens/s",
                                [full_tokens / s for s in full_times])
        result.ratio("KV cache / no cache", with_cache, without)
        result.notes.append(f"identical outputs on both paths: {same}")
        result.write(args.json)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
