"""Credentials in a job's config never reach MLflow params: the training driver's own logging call
against the session's real sqlite store (no Ray; the store is shared, so this costs milliseconds here)."""

from __future__ import annotations

from pathlib import Path

from jobs.common.redaction import MASK


def test_the_training_driver_logs_redacted_params(mlflow_uri: str, tmp_path: Path):
    """``open_training_run``: the one place every training job's config goes to MLflow."""
    from jobs.common.tracking import TrackingConfig, client_for, prepare_tracking
    from jobs.train.driver import open_training_run
    from jobs.train.settings import RunSettings

    target = prepare_tracking(TrackingConfig(tracking_uri=mlflow_uri))
    config = {"tracking": {"tracking_uri": "postgresql://mlflow:Pg-S3cret@db.internal/mlflow"},
              "data": {"id_column": "id", "api_key": "AKIAEXAMPLE"}}
    run = open_training_run(target, RunSettings(storage_path=str(tmp_path / "ray")), "redaction-test", tags={},
                            config_dict=config, params={"source": "https://u:Tok3n@host/data.csv"}, dicts={},
                            baselines={})
    params = client_for(target).get_run(run.mlflow_run_id).data.params
    assert params["tracking.tracking_uri"] == "postgresql://mlflow:***@db.internal/mlflow"
    assert params["data.api_key"] == MASK and params["data.id_column"] == "id"
    assert params["source"] == "https://u:***@host/data.csv"
    assert not any(secret in value for value in params.values() for secret in ("Pg-S3cret", "AKIAEXAMPLE", "Tok3n"))
