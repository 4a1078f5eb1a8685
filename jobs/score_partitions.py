"""Score the input partitions a model alias has not scored yet, exactly once each.

    python -m jobs.score_partitions --config configs/score_partitions.local-cpu.yaml \
        [--set on_new_model_version=rescore] [--set on_changed_inputs=fail]

Meant to run on a schedule (``deploy/``: cron + ``ray job submit``, or a Kubernetes CronJob that
creates KubeRay RayJobs). ``jobs.scoring.partitions`` says what each run does: which partitions it
scores, skips or fails, how it leases and commits them (``jobs.scoring.ledger``: the output layout
and the reader contract). Exits non-zero naming the failed partitions; a failed partition does not
stop the others.
"""

from __future__ import annotations

import sys

from jobs.common import cli
from jobs.common import config as config_lib
from jobs.common.redaction import redact_text
from jobs.scoring.partitions import ScorePartitionsConfig, run
from jobs.scoring.pipeline import ScoringError, summary_line


@cli.entry_point("scheduled scoring", known=(ScoringError,))
def main(argv: list[str] | None = None) -> int:
    config, _ = config_lib.parse_args(ScorePartitionsConfig, __doc__.splitlines()[0], argv)
    result = run(config)
    counts = result.totals()
    by_status: dict[str, int] = {}
    for p in result.partitions:
        by_status[p.status] = by_status.get(p.status, 0) + 1
    print("\n=== scheduled scoring finished ===")
    print(f"model {result.model_name} version {result.model_version}; partitions: "
          + (", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none found"))
    print(summary_line(counts) + f"; run took {result.seconds:.1f} s; MLflow run {result.run_id}")
    for reason, setting, what in (("stale_model", "on_new_model_version", "by an older model version"),
                                  ("changed_inputs", "on_changed_inputs", "from input files that changed since")):
        stale = [p.partition for p in result.partitions if p.status == "skipped" and p.reason == reason]
        if stale:
            print(f"{len(stale)} partition(s) were scored {what}; --set {setting}=rescore scores them again: "
                  f"{', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}")
    if result.failed:
        print(f"\n{len(result.failed)} partition(s) FAILED:", file=sys.stderr)
        for p in result.failed:
            print(f"  {p.partition}: {redact_text(str(p.error))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
