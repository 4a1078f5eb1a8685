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
