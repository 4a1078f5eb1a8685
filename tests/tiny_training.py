"""The tiny fine-tune the fault tests share: its config overrides, and the exactly-once history check.

Every run uses ``run.deterministic`` so a faulted run can be compared with an uninterrupted one
(conftest's ``tiny_reference``): same seed, config and worker count give the same parameters and
metrics on CPU.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs/finetune_classifier.tiny.yaml"
TOLERANCE = 1e-4
HISTORY_KEYS = ("train_loss", "learning_rate", "val_accuracy", "val_loss")


def tiny_config(corpus: Path, model_dir: Path, storage: Path, name: str, **extra: str) -> list[str]:
    overrides = [f"data.train={corpus / 'train.parquet'}", f"data.val={corpus / 'val.parquet'}",
                 f"data.test={corpus / 'test.parquet'}", f"model.name_or_path={model_dir}",
                 f"run.storage_path={storage}", f"run.name={name}"]
    return overrides + [f"{k}={v}" for k, v in extra.items()]


def latest_recorded_checkpoint(run_dir: str) -> str | None:
    """The folder of the checkpoint Ray Train has recorded last for the run at ``run_dir`` (a local path or a
    URI), if any: a restart resumes from it. A checkpoint lands in storage before the controller records it,
    and a kill in between resumes from the one before, so the fault tests wait for the record."""
    from data_pipeline.paths import filesystem_for
    from data_pipeline.storage import Storage

    fs, base = filesystem_for(run_dir)
    snapshot = Storage(fs).read_json(f"{base}/checkpoint_manager_snapshot.json")
    latest = snapshot.get("latest_checkpoint_result") if snapshot else None
    return latest.get("checkpoint_dir_name") if latest else None


def history_of(client, run_id: str, key: str) -> dict[int, float]:
    """``{step: value}`` of one metric, failing on a step logged twice."""
    history: dict[int, float] = {}
    for metric in client.get_metric_history(run_id, key):
        assert metric.step not in history, f"{key} logged twice at step {metric.step}"
        history[metric.step] = metric.value
    return history


def assert_history_exactly_once(client, run_id: str, reference_client, reference_run_id: str,
                                keys: tuple[str, ...] = HISTORY_KEYS) -> None:
    """No step logged twice, and the same curve as the uninterrupted run, step for step."""
    for key in keys:
        history = history_of(client, run_id, key)
        expected = {m.step: m.value for m in reference_client.get_metric_history(reference_run_id, key)}
        assert sorted(history) == sorted(expected), key
        assert all(abs(history[s] - expected[s]) < TOLERANCE for s in expected), key
