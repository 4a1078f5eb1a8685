"""Train the scratch encoder-decoder Transformer (Chinese -> pinyin by default) with Ray Train DDP.

    python -m jobs.train_seq2seq --config configs/train_seq2seq.local-cpu.yaml

Parses the config, validates the Parquet splits (id/source/target), trains one tokenizer per side
on the train split, measures the per-character baseline, trains through the shared loop
(``jobs/train/``) with length-bucketed token-budget batches, then logs, registers and aliases
a pyfunc model that turns source texts into decoded target texts. ``jobs.train.seq2seq`` holds the
config and the task.
"""

from __future__ import annotations

import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.train.run_claim import RunNameTaken
from jobs.train.run_tracking import TrackingIncomplete
from jobs.train.seq2seq import Seq2SeqTrainConfig, report, run


@cli.entry_point("seq2seq training", known=(RunNameTaken,), later=(TrackingIncomplete,))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(Seq2SeqTrainConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    report(outcome, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
