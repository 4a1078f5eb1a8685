"""The promotion gate's rule (a pure function) and its config: what promotes, what keeps production."""

from __future__ import annotations

import math
from types import SimpleNamespace
from pathlib import Path

import pytest

from jobs.common.config import ConfigError, load
from jobs.evaluation.promotion import PromoteConfig, decide

REPO = Path(__file__).resolve().parents[2]


def test_a_candidate_better_than_production_by_more_than_the_margin_and_the_baseline_is_promoted():
    decision = decide("macro_f1", 0.84, production=0.80, baseline=0.82, margin=0.02, require_baseline=True)
    assert decision.outcome == "promoted"
    assert decision.reason == "candidate macro_f1 0.8400 beats production 0.8000 + margin 0.02, baseline 0.8200"


@pytest.mark.parametrize("candidate, production, margin", [
    (0.81, 0.80, 0.02),  # better, but not by the margin
    (0.82, 0.80, 0.02),  # exactly the margin: "by more than" is strict
    (0.80, 0.80, 0.0),  # a tie keeps production
    (0.70, 0.80, 0.0),  # worse
])
def test_a_candidate_not_beating_production_by_more_than_the_margin_is_kept(candidate, production, margin):
    decision = decide("accuracy", candidate, production=production, baseline=0.5, margin=margin,
                      require_baseline=True)
    assert decision.outcome == "kept"
    assert decision.reason.startswith(f"candidate accuracy {candidate:.4f} does not beat production")


def test_beating_production_is_not_enough_when_the_baseline_is_better():
    decision = decide("macro_f1", 0.84, production=0.80, baseline=0.85, margin=0.0, require_baseline=True)
    assert decision.outcome == "kept" and "char n-gram baseline 0.8500" in decision.reason
    # ... unless the baseline is not required
    assert decide("macro_f1", 0.84, production=0.80, baseline=0.85, margin=0.0,
                  require_baseline=False).outcome == "promoted"


def test_with_no_production_the_baseline_is_the_bar():
    assert decide("macro_f1", 0.86, production=None, baseline=0.85, margin=0.5,
                  require_baseline=True).outcome == "promoted"  # the margin is over production, not the baseline
    kept = decide("macro_f1", 0.85, production=None, baseline=0.85, margin=0.0, require_baseline=True)
    assert kept.outcome == "kept" and "baseline" in kept.reason
    first = decide("macro_f1", 0.3, production=None, baseline=None, margin=0.0, require_baseline=False)
    assert first.outcome == "promoted" and "no version in production" in first.reason


def test_a_metric_that_is_not_a_number_never_wins():
    assert decide("macro_f1", math.nan, production=None, baseline=0.5, margin=0.0,
                  require_baseline=True).outcome == "kept"
    assert decide("macro_f1", 0.9, production=math.nan, baseline=0.5, margin=0.0,
                  require_baseline=True).outcome == "kept"
    assert decide("macro_f1", 0.9, production=0.5, baseline=math.nan, margin=0.0,
                  require_baseline=True).outcome == "kept"


def test_a_required_baseline_that_was_not_measured_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="baseline"):
        decide("macro_f1", 0.9, production=0.5, baseline=None, margin=0.0, require_baseline=True)


def test_shipped_config_loads_and_defaults_are_the_gate_the_issue_asks_for():
    config = load(PromoteConfig, REPO / "configs/promote.local-cpu.yaml")
    assert (config.registered_model, config.candidate_alias, config.production_alias) == (
        "review-sentiment", "candidate", "production")
    assert config.metric == "macro_f1" and config.margin == 0.0 and config.require_beat_baseline
    assert config.input.path == "data/corpus/test.parquet" and config.input.train_path == "data/corpus/train.parquet"
    assert config.tracking.experiment == "promote"
    assert load(PromoteConfig, None) == PromoteConfig()
    shipped = sorted((REPO / "configs").glob("promote.*.yaml"))
    assert len(shipped) >= 2 and all(load(PromoteConfig, path).registered_model for path in shipped)


@pytest.mark.parametrize("override, message", [
    ("metric=f1", "metric"),
    ("margin=-0.01", "margin"),
    ("input.train_path=null", "require_beat_baseline needs input.train_path"),
    ("production_alias=candidate", "both 'candidate'"),
])
def test_a_gate_that_cannot_work_is_refused_by_the_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load(PromoteConfig, REPO / "configs/promote.local-cpu.yaml", [override])
    assert load(PromoteConfig, None, ["input.train_path=null", "require_beat_baseline=false"]).input.train_path is None


def _evaluated(role: str, version: str, digest: str, rows=(0, 1, 2), kind="classifier", **metrics):
    import numpy as np

    from jobs.evaluation.promotion import Version

    # Only what the check reads of an evaluation: its metrics, the rows it scored, the model's kind, the run.
    outcome = SimpleNamespace(metrics=metrics or {"accuracy": 0.8, "macro_f1": 0.8}, run_id=f"run-{version}",
                              result=SimpleNamespace(rows=np.array(rows)), model=SimpleNamespace(kind=kind))
    return Version(role, role, version, evaluation=outcome, data_digest=digest)


def test_evaluations_of_other_data_or_other_rows_are_not_compared():
    from jobs.evaluation.promotion import PromotionError, check_comparable

    check_comparable("d1", _evaluated("candidate", "2", "d1"), _evaluated("production", "1", "d1", rows=(2, 0, 1)),
                     "macro_f1")
    check_comparable("d1", _evaluated("candidate", "2", "d1"), None, "macro_f1")
    with pytest.raises(PromotionError, match="production's evaluation .run run-1. measured data with digest d2"):
        check_comparable("d1", _evaluated("candidate", "2", "d1"), _evaluated("production", "1", "d2"), "macro_f1")
    with pytest.raises(PromotionError, match="candidate's evaluation"):
        check_comparable("d1", _evaluated("candidate", "2", None), None, "macro_f1")
    with pytest.raises(PromotionError, match="scored different rows"):
        check_comparable("d1", _evaluated("candidate", "2", "d1"), _evaluated("production", "1", "d1", rows=(0, 1)),
                         "macro_f1")
    with pytest.raises(PromotionError, match="version 2 has no macro_f1 .a seq2seq model"):
        check_comparable("d1", _evaluated("candidate", "2", "d1", kind="seq2seq", syllable_accuracy=0.9), None,
                         "macro_f1")
