"""Score a Parquet corpus with a classifier or a seq2seq model through a streaming Ray Data pipeline.

    python -m jobs.batch_infer --config configs/batch_infer.local-cpu.yaml

Nothing is visible at ``<output_dir>/<run_name>/`` until the run is complete; a run that crashed
resumes when started again with the same ``run_name``; a target that already holds output is refused
unless ``replace`` is set. When MLflow does not answer after the publish, the job still exits 0 and
warns with the ``python -m jobs.record_scoring`` command that records the summary later.
``jobs.scoring.batch`` says how: the pipeline's stages, the chunks, the staging area and the publish.
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
