"""bench.first_step's reading of a run: which process is which."""

from __future__ import annotations

from bench.first_step import role


def test_processes_are_told_apart_by_their_titles():
    assert role(10, 10, "python -u -m jobs.finetune_classifier --config x") == "the job's driver"
    assert role(11, 10, "ray::RayTrainWorker.run_train_fn") == "training workers"
    assert role(12, 10, "ray::TrainController.run") == "Ray helper: TrainController"
    assert role(13, 10, "ray::SplitCoordinator.start_epoch") == "Ray helper: SplitCoordinator"
    assert role(14, 10, "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket") \
        == "Ray daemons (GCS, raylet, agents, monitors)"
    assert role(15, 10, "ray::IDLE") == "other Ray workers (tasks: read, tokenize; idle)"

