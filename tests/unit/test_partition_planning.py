"""score_partitions without Ray: what it decides per partition, and that one partition's failure stays its own."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.common import config as config_lib
from jobs.common.registry import ResolvedModel
from jobs.scoring.partition_plan import Decision, Partition, decide, discover_partitions
from jobs.scoring.partitions import Claimed, ScorePartitionsConfig, claim, commit, decide_for
from jobs.scoring.ledger import Attempt, Lease, LeaseSettings, Ledger, OutputVersion, Store, committed_versions
from jobs.scoring.pipeline import PipelineCounts, ScoringModel
from jobs.scoring.predictors import PredictorSettings

INPUTS = [{"file": "part-0.parquet", "size": 10, "mtime_ns": 1}]
CHANGED = [*INPUTS, {"file": "part-1.parquet", "size": 7, "mtime_ns": 2}]  # rows added after scoring
V2 = ResolvedModel(load_uri="", name="m", version="2", run_id="r")


def scored_by(model_version: str, inputs=INPUTS) -> OutputVersion:
    return OutputVersion("p", 1, "u", {"model": {"name": "m", "version": model_version}, "inputs": inputs,
                                       "files": []})


# ------------------------------------------------------------------ 4. changed inputs and moved aliases

def test_decide_new_done_and_stale_model():
    assert decide([], INPUTS, V2) == Decision(True, "new")
    assert decide([scored_by("2")], INPUTS, V2).reason == "done"
    assert decide([scored_by("1")], INPUTS, V2) == Decision(False, "stale_model", scored_by("1"))
    assert decide([scored_by("1")], INPUTS, V2, on_new_model_version="rescore").reason == "rescore_model"


def test_changed_inputs_are_rescored_by_default():
    decision = decide([scored_by("2", INPUTS)], CHANGED, V2)
    assert decision.score and decision.reason == "rescore_inputs"
    # a moved alias does not hide the new rows: they are scored, by the current version
    assert decide([scored_by("1", INPUTS)], CHANGED, V2).reason == "rescore_inputs"


def test_changed_inputs_skip_or_fail_by_setting():
    skipped = decide([scored_by("2", INPUTS)], CHANGED, V2, on_changed_inputs="skip")
    assert (skipped.score, skipped.reason, skipped.fail) == (False, "changed_inputs", False)
    assert skipped.outcome("p").status == "skipped"
    failed = decide([scored_by("2", INPUTS)], CHANGED, V2, on_changed_inputs="fail")
    assert (failed.score, failed.fail) == (False, True)
    outcome = failed.outcome("p")
    assert outcome.status == "failed" and "input files changed since v1" in outcome.error
    # skip changed inputs, but rescore for a new model version: the alias moved, so it is scored
    both = decide([scored_by("1", INPUTS)], CHANGED, V2, on_changed_inputs="skip", on_new_model_version="rescore")
    assert both.score and both.reason == "rescore_model"


def test_config_defaults_and_the_rescore_shorthand():
    config = ScorePartitionsConfig()
    assert (config.on_changed_inputs, config.on_new_model_version) == ("rescore", "skip")
    assert config.require_input_marker == "_SUCCESS"
    assert decide_for(config, [scored_by("2", INPUTS)], CHANGED, V2).reason == "rescore_inputs"
    shorthand = config_lib.build(ScorePartitionsConfig, {"rescore": True, "on_changed_inputs": "fail"})
    assert (shorthand.changed_inputs_policy, shorthand.new_model_policy) == ("rescore", "rescore")
    assert decide_for(shorthand, [scored_by("1")], INPUTS, V2).reason == "rescore_model"
    with pytest.raises(config_lib.ConfigError, match="on_changed_inputs"):
        config_lib.build(ScorePartitionsConfig, {"on_changed_inputs": "ignore"})


def test_shipped_configs_require_the_input_marker():
    repo = Path(__file__).resolve().parents[2]
    for path in sorted(repo.glob("configs/score_partitions*.yaml")):
        config = config_lib.load(ScorePartitionsConfig, str(path))
        assert config.require_input_marker == "_SUCCESS", path
        assert config.changed_inputs_policy == "rescore", path


def test_discover_partitions_matches_each_level_and_skips_hidden(tmp_path: Path):
    for rel in ("date=2026-11-24", "date=2026-11-25", "_tmp", "other", "region=eu/date=2026-11-25"):
        (tmp_path / rel).mkdir(parents=True)
    assert [p.name for p in discover_partitions(str(tmp_path), "date=*")] == ["date=2026-11-24", "date=2026-11-25"]
    assert [p.name for p in discover_partitions(str(tmp_path), "region=*/date=*")] == ["region=eu/date=2026-11-25"]


# ------------------------------------------------------------------ 6. a lease store error fails one partition

def write_partition(root: Path, name: str) -> Partition:
    folder = root / name
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["好", "坏"]}), folder / "part-0.parquet")
    (folder / "_SUCCESS").touch()
    return Partition(name, str(folder))


def test_a_store_error_on_one_lease_fails_that_partition_only(tmp_path: Path):
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    good, bad = write_partition(incoming, "date=1"), write_partition(incoming, "date=2")
    (out / "_leases").mkdir(parents=True)
    (out / "_leases" / "date=2").write_text("not a directory")  # listing this partition's leases fails
    store, config = Store(str(out)), ScorePartitionsConfig(lease=LeaseSettings(ttl_s=60, heartbeat_s=30))
    failed = claim(bad, store, V2, config, {})
    assert failed.status == "failed" and failed.reason == "NotADirectoryError"
    assert "_leases" in failed.error
    claimed = claim(good, store, V2, config, {})  # the next partition is claimed as usual
    try:
        assert isinstance(claimed, Claimed) and claimed.decision.reason == "new"
    finally:
        claimed.lease.release()


def test_changed_inputs_with_fail_setting_fail_the_partition_under_its_lease(tmp_path: Path):
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    partition = write_partition(incoming, "date=1")
    store = Store(str(out))
    version = out / "date=1" / "v1"
    version.mkdir(parents=True)
    (version / "_SUCCESS").write_text('{"files": [], "model": {"name": "m", "version": "2"}, "inputs": []}')
    config = config_lib.build(ScorePartitionsConfig, {"on_changed_inputs": "fail"})
    outcome = claim(partition, store, V2, config, {})
    assert outcome.status == "failed" and outcome.reason == "changed_inputs"
    assert Lease.holder(store, "date=1")["released"] is True  # released again


# ------------------------------------------------------------------ 3. a commit that fails is a failed partition

def test_a_failed_commit_is_a_failed_partition_naming_the_paths(tmp_path: Path):
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    partition = write_partition(incoming, "date=1")
    store = Store(str(out))
    lease = Lease.acquire(store, "date=1", LeaseSettings(ttl_s=60, heartbeat_s=30), {})
    attempt = Attempt(store, "date=1", 1, "a0")
    attempt.prepare()
    Path(attempt.write_uri).mkdir(parents=True)
    (Path(attempt.write_uri) / "part-0.parquet").write_bytes(b"rows")
    (out / "date=1" / "v1").mkdir(parents=True)  # a version dir appeared without a manifest (not ours)
    (out / "date=1" / "v1" / "part-9.parquet").write_bytes(b"x")
    claimed = Claimed(partition, lease, Decision(True, "new"), attempt, "now")
    from data_pipeline.quarantine import ScoringGroup
    from data_pipeline.paths import resolve_parquet_files

    claimed.group = ScoringGroup("date=1", resolve_parquet_files(partition.uri), ())
    counts = PipelineCounts(rows_in=1, rows_out=1, rows_rejected=0, rejected_by_reason={},
                            files=[{"path": "part-0.parquet", "rows": 1, "kind": "scored"}], seconds=0.1)
    model = ScoringModel(V2, None, str(tmp_path), "classifier")
    try:
        outcome = commit(claimed, counts, store, Ledger(store), model, PredictorSettings(), "run-1")
    finally:
        lease.release()
    assert outcome.status == "failed" and outcome.reason == "CommitFailed"
    assert str(out / "date=1" / "v1") in outcome.error and attempt.write_uri in outcome.error
    assert "ENOTEMPTY" in outcome.error or "EEXIST" in outcome.error
    assert committed_versions(store, "date=1") == [] and Ledger(store).entries() == []
