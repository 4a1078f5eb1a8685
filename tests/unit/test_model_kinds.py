"""The model-kind registry (jobs.kinds): every kind the registry detects has one complete spec."""

from __future__ import annotations

from typing import get_args

import pytest

from jobs.common.registry import ModelKind
from jobs.kinds import KINDS, kind_spec
from jobs.scoring.predictors import PredictorSettings
from jobs.scoring.settings import PipelineSettings


def test_every_detected_kind_has_a_spec_under_its_own_name():
    assert sorted(KINDS) == sorted(get_args(ModelKind))
    assert all(spec.name == name for name, spec in KINDS.items())
    with pytest.raises(ValueError, match="unknown model kind 'regressor'"):
        kind_spec("regressor")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_separate_tokenize_stage_comes_with_the_actor_it_feeds(kind):
    spec = KINDS[kind]
    assert (spec.tokenize_stage is None) == (spec.staged_predictor is None)
    assert PipelineSettings().tokenize_stage(kind) == (spec.tokenize_stage is not None)
    assert not PipelineSettings(predictor=PredictorSettings(tokenize_in_actor=True)).tokenize_stage(kind)
    assert spec.scored_schema.field("id") is not None and spec.headline_metric in spec.summary_columns
