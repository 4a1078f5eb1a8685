"""The metric buffer on a real MLflow sqlite store: every point exactly once across restarts and outages.

No Ray: each "attempt" of a training run is a fresh ``MetricBuffer`` (a new worker process), a
"checkpoint" is the buffer's JSON at that moment, and faults are injected into the client (a call
that fails before it reaches the store, or after the store took it and the reply was lost).
"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from jobs.common.metric_buffer import TRACKING_FILE, MetricBuffer


class FaultyClient:
    """A real client whose chosen calls fail: ``down`` before reaching the store, ``lose_reply`` after."""

    def __init__(self, client):
        self.client = client
        self.down = False
        self.lose_reply = 0  # this many log_batch calls reach the store, then raise

    def __getattr__(self, name):
        call = getattr(self.client, name)

        def wrapped(*args, **kwargs):
            if self.down:
                raise MlflowException("API request failed: connection refused (server stopped)")
            result = call(*args, **kwargs)
            if name == "log_batch" and self.lose_reply:
                self.lose_reply -= 1
                raise MlflowException("API request failed: read timed out (the store took the batch)")
            return result
        return wrapped


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('buffer') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    return client, client.create_experiment("buffer")


@pytest.fixture
def run(store):
    client, experiment = store
    return FaultyClient(client), client.create_run(experiment).info.run_id


def history(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.client.get_metric_history(run_id, key))


def log_epoch(buffer: MetricBuffer, first: int, last: int, every: int, epoch: int) -> None:
    """Steps first..last: train_loss on the logging grid, end-of-epoch metrics at ``last``."""
    for step in range(first, last + 1):
        if step % every == 0:
            buffer.add({"train_loss": 1.0 / step, "epoch": epoch}, step)
    buffer.add({"val_loss": 0.5 / (epoch + 1), "epoch": epoch, "step": last}, last)


def test_a_worker_dying_after_a_send_before_the_first_checkpoint_does_not_log_the_epoch_twice(run):
    client, run_id = run
    first = MetricBuffer()
    log_epoch(first, 1, 5, 1, epoch=0)
    first.send(client, run_id)  # ... and the worker dies: no checkpoint, nothing carried
    second = MetricBuffer()  # the restarted worker starts from scratch
    log_epoch(second, 1, 5, 1, epoch=0)
    second.send(client, run_id)
    assert history(client, run_id, "train_loss") == [1, 2, 3, 4, 5]
    assert history(client, run_id, "val_loss") == [5]


def test_end_of_epoch_metrics_off_the_logging_grid_are_not_logged_twice_after_a_restart(run):
    client, run_id = run
    first = MetricBuffer()
    log_epoch(first, 1, 5, 4, epoch=0)  # train_loss at 4, val_loss at 5 (off the grid of 4)
    first.send(client, run_id)
    checkpoint = first.to_json()  # epoch 0's checkpoint
    log_epoch(first, 6, 10, 4, epoch=1)  # train_loss at 8, val_loss at 10
    first.send(client, run_id)  # ... and the worker dies before epoch 1's checkpoint
    second = MetricBuffer()
    second.merge_carried(checkpoint)
    second.record_restart(5)
    log_epoch(second, 6, 10, 4, epoch=1)
    second.send(client, run_id)
    assert history(client, run_id, "train_loss") == [4, 8]
    assert history(client, run_id, "val_loss") == [5, 10]
    assert history(client, run_id, "epoch") == [4, 5, 8, 10]


def test_an_outage_keeps_points_in_each_checkpoint_and_a_restart_replays_them_once(run, tmp_path):
    client, run_id = run
    first = MetricBuffer()
    first.set_tags({"train_device": "cpu"})
    log_epoch(first, 1, 3, 1, epoch=0)
    client.down = True
    with pytest.raises(MlflowException):
        first.send(client, run_id)
    first.save(tmp_path)  # epoch 0's checkpoint, written during the outage
    log_epoch(first, 4, 6, 1, epoch=1)
    with pytest.raises(MlflowException):
        first.send(client, run_id)  # the worker dies before epoch 1's checkpoint
    second = MetricBuffer.load(tmp_path)
    second.record_restart(3)
    log_epoch(second, 4, 6, 1, epoch=1)
    with pytest.raises(MlflowException):
        second.send(client, run_id)
    client.down = False
    carried = len(json.loads((tmp_path / TRACKING_FILE).read_text())["points"])
    assert second.send(client, run_id) == carried + 8  # epoch 1: train_loss, epoch x3; val_loss, step
    assert second.is_empty()
    assert history(client, run_id, "train_loss") == [1, 2, 3, 4, 5, 6]
    assert history(client, run_id, "val_loss") == [3, 6]
    tags = client.client.get_run(run_id).data.tags
    assert tags["train_device"] == "cpu" and tags["restarts"] == "1" and tags["resumed_from_steps"] == "3"


def test_a_batch_whose_reply_was_lost_is_resent_and_stored_once(run):
    client, run_id = run
    buffer = MetricBuffer()
    log_epoch(buffer, 1, 4, 1, epoch=0)
    client.lose_reply = 1
    with pytest.raises(MlflowException):
        buffer.send(client, run_id)
    assert buffer.pending_points > 0  # not confirmed: kept
    buffer.send(client, run_id)
    assert history(client, run_id, "train_loss") == [1, 2, 3, 4]
    assert history(client, run_id, "val_loss") == [4]


def test_the_final_checkpoint_replayed_by_the_driver_adds_only_what_is_missing(run):
    client, run_id = run
    worker = MetricBuffer()
    log_epoch(worker, 1, 2, 1, epoch=0)
    worker.send(client, run_id)
    log_epoch(worker, 3, 4, 1, epoch=1)
    final_checkpoint = worker.to_json()  # written while epoch 1's send was in flight
    worker.send(client, run_id)
    driver = MetricBuffer()
    driver.merge_carried(final_checkpoint)
    assert driver.send(client, run_id) == 0
    assert history(client, run_id, "train_loss") == [1, 2, 3, 4]


def test_restarts_are_counted_once_each_even_when_one_happened_during_an_outage(run):
    client, run_id = run
    first = MetricBuffer()
    first.record_restart(10, workers=2)
    client.down = True
    with pytest.raises(MlflowException):
        first.send(client, run_id)
    carried = first.to_json()  # this attempt never reached MLflow; its checkpoint carries its restart
    client.down = False
    second = MetricBuffer()
    second.merge_carried(carried)
    second.record_restart(20, workers=1)  # an elastic group resumed smaller
    client.lose_reply = 1
    with pytest.raises(MlflowException):
        second.send(client, run_id)
    second.send(client, run_id)
    tags = client.client.get_run(run_id).data.tags
    assert tags["restarts"] == "2" and tags["resumed_from_steps"] == "10,20"
    assert tags["resumed_with_workers"] == "2,1"  # each restart's group size, kept beside its step


def test_a_second_point_of_a_key_at_the_same_step_is_dropped():
    buffer = MetricBuffer()
    buffer.add({"epoch": 0, "train_loss": 0.5}, 12)
    buffer.add({"epoch": 0, "val_loss": 0.4}, 12)  # the epoch's end falls on the logging grid
    buffer.add({"epoch": 0}, 11)
    assert sorted((p[0], p[3]) for p in buffer.to_json()["points"]) == [
        ("epoch", 12), ("train_loss", 12), ("val_loss", 12)]


def test_rank_zeros_sender_keeps_training_unblocked_and_sends_at_a_later_flush(run, monkeypatch, tmp_path):
    """The worker's side: flushes return at once while the store is down, each checkpoint carries what is
    unsent, and the first flush after the store answers again sends all of it, once."""
    import time

    from jobs.common.tracking import TrackingTarget
    from jobs.train import metric_log

    client, run_id = run
    monkeypatch.setattr(metric_log, "client_for", lambda target: client)
    monkeypatch.setattr(metric_log, "RETRY_MIN_S", 0.05)
    log = metric_log.MetricLog(TrackingTarget("unused", "0", "unused"), run_id, enabled=True)
    client.down = True
    log.set_tags({"train_device": "cpu"})
    log.log({"train_loss": 0.9, "val_loss": 0.8}, 12)
    started = time.monotonic()
    log.flush()
    assert time.monotonic() - started < 0.5  # the loop does not wait for MLflow
    assert not log.wait_sent(2.0)
    log.save(tmp_path)  # epoch 0's checkpoint, during the outage
    assert len(json.loads((tmp_path / TRACKING_FILE).read_text())["points"]) == 2
    client.down = False
    log.log({"train_loss": 0.7, "val_loss": 0.6}, 24)
    log.flush()  # epoch 1's end, with the store back
    assert log.wait_sent(10.0)
    log.close()
    assert history(client, run_id, "train_loss") == [12, 24] and history(client, run_id, "val_loss") == [12, 24]
    assert client.client.get_run(run_id).data.tags["train_device"] == "cpu"
