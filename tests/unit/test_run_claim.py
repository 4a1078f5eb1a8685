"""One launcher per run.name, on a real MLflow sqlite store: a race, a live holder, a crashed one, odd names.

No Ray, no server: each launcher is a ``RunClaim`` (its own launch id); a crashed launcher is the
tag of a process that has exited.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import mlflow
import pytest

from jobs.train.run_claim import (CLAIM_TTL_S, HEARTBEAT_TAG, LAUNCHER_TAG, RUN_NAME_TAG, Launcher, RunClaim,
                                  RunNameTaken)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('claims') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    return client, client.create_experiment("claims")


def claim(store, name: str) -> RunClaim:
    client, experiment = store
    return RunClaim(client, experiment, name, settle_s=0.2)


def runs_named(store, name: str) -> list:
    client, experiment = store
    return [r for r in client.search_runs([experiment]) if r.data.tags.get(RUN_NAME_TAG) == name]


def test_two_launchers_of_one_name_at_once_make_one_run_and_one_of_them_backs_off(store):
    launchers = [claim(store, "race"), claim(store, "race")]
    barrier, results = threading.Barrier(2), {}

    def launch(index: int) -> None:
        barrier.wait()
        try:
            results[index] = launchers[index].acquire({})
        except RunNameTaken as exc:
            results[index] = exc

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [r for r in results.values() if isinstance(r, tuple)]
    lost = [r for r in results.values() if isinstance(r, RunNameTaken)]
    assert len(won) == 1 and len(lost) == 1, results
    assert [r.info.run_id for r in runs_named(store, "race")] == [won[0][0]]  # the loser deleted its run


def test_a_second_launcher_is_refused_while_the_first_holds_the_run(store):
    first = claim(store, "held")
    run_id, resumed = first.acquire({})
    assert not resumed
    with pytest.raises(RunNameTaken, match=r"is being trained by launcher .*wait for it to end"):
        claim(store, "held").acquire({})
    assert len(runs_named(store, "held")) == 1


def test_a_crashed_launcher_on_this_host_does_not_block_the_rerun_that_resumes_its_run(store):
    client, _ = store
    first = claim(store, "crashed")
    run_id, _ = first.acquire({})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = Launcher(first.me.host, int(dead.stdout), time.time() - 5, "dead-launch")
    client.set_tag(run_id, LAUNCHER_TAG, gone.to_tag())  # as if that process had claimed it and was SIGKILLed
    assert claim(store, "crashed").acquire({}) == (run_id, True)


def test_a_silent_launcher_on_another_host_is_waited_for_until_its_claim_lapses(store):
    client, _ = store
    run_id, _ = claim(store, "remote").acquire({})
    client.set_tag(run_id, LAUNCHER_TAG, Launcher("another-host", 4242, None, "remote-launch").to_tag())
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() - 10:.0f}")
    with pytest.raises(RunNameTaken, match="another-host:4242"):
        claim(store, "remote").acquire({})
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() - CLAIM_TTL_S - 1:.0f}")
    assert claim(store, "remote").acquire({}) == (run_id, True)


def test_a_finished_run_is_resumed_by_the_next_launcher(store):
    client, _ = store
    run_id, _ = claim(store, "finished").acquire({})
    client.set_terminated(run_id, "FINISHED")
    assert claim(store, "finished").acquire({}) == (run_id, True)
    assert client.get_run(run_id).info.status == "RUNNING"


@pytest.mark.parametrize("name", ["it's-mine", 'the "best" run'])
def test_names_with_quotes_find_their_run_again(store, name):
    run_id, resumed = claim(store, name).acquire({})
    client, _ = store
    client.set_terminated(run_id, "FINISHED")
    assert not resumed
    assert claim(store, name).acquire({}) == (run_id, True)


def test_a_name_with_both_quotes_is_refused_by_name(store):
    with pytest.raises(ValueError, match="holds both ' and \""):
        claim(store, "it's \"both\"").acquire({})
