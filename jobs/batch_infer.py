"""Score a Parquet corpus with a classifier or a seq2seq model through a streaming Ray Data pipeline.

    python -m jobs.batch_infer --config configs/batch_infer.local-cpu.yaml

read + tag bad rows (``ScoringSource`` tasks) -> tokenize (CPU tasks) -> predict (actor pool,
model loaded once per actor, tagged rows skipped) -> ``SplitScoredSink`` (scored rows to
``<output>/``, rejected rows to ``<output>/_rejected/``) -> ``_SUCCESS`` manifest. One pass over
the data, streaming: nothing is materialised. Each scored row keeps the input id and adds the
predicted label, its name and its probability (a seq2seq model: the ``generated`` text, decoded
greedily or by beam search in the actors, which tokenize with the model's own vocabulary) and
the model name, version and run id that scored it; each rejected row has ``id``, ``reason`` and
``source_file``. Rows out + rows rejected = rows in, checked before the manifest is written.

Nothing is visible at ``<output_dir>/<run_name>/`` until the run is complete: the input is
scored in chunks of whole files (``chunk_rows``), each committed to the run's staging area
``<output_dir>/_staging/<run_name>/``, and the output is published atomically at the end
(``jobs.scoring.run_staging`` has the layout and the protocol). A run that crashed resumes when
started again with the same ``run_name``: it scores only the files no committed chunk covers.
A target that already holds output is refused unless ``replace`` is set.

The MLflow run's summary (counts, manifest, description) is written after the publish and is
bookkeeping: when MLflow does not answer within ``tracking.outage_tolerance_s`` the job still
exits 0 (the output is complete) and warns with the command that records the summary later
(``python -m jobs.record_scoring --output <output>``).
"""

from __future__ import annotations

import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.common.redaction import redact_text
from jobs.scoring.batch import BatchInferConfig, run
from jobs.scoring.pipeline import ScoringError, summary_line
from jobs.scoring.run_staging import TargetOccupied


@cli.entry_point("batch scoring", known=(ScoringError, TargetOccupied))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(BatchInferConfig, __doc__.splitlines()[0], argv)
    outcome = run(config)
    print("\n=== batch scoring finished ===")
    print(summary_line(outcome.counts))
    if outcome.chunks_resumed:
        print(f"resumed: {outcome.chunks_resumed} chunk(s), {outcome.rows_resumed} rows committed by an earlier "
              f"attempt; {outcome.chunks_scored} chunk(s) scored now")
    print(f"model version {outcome.model_version}; output {redact_text(outcome.output_path)} "
          f"(rejected rows: {outcome.rejected_path}); MLflow run {outcome.run_id}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
