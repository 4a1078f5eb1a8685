"""Build the labelled review corpus (or convert a user's files) into train/val/test Parquet.

    python -m jobs.prepare_corpus --config configs/prepare_corpus.yaml

Also writes Chinese -> pinyin pairs for the seq2seq model, for the shipped reviews or when
``seq2seq.enabled``. ``jobs.corpus.prepare`` says what it reads, how texts are cleaned and split, and
how each output folder is published whole (a crash leaves the old corpus or the new one, never a mix).
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
