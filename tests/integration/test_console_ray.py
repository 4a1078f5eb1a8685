"""Real local Ray: a worker's known noise never reaches the driver's output, its errors do; verbose shows all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A driver of its own: the setup hook is installed by init_ray when it starts Ray, not by the session's Ray.
DRIVER = r'''
import logging, sys, time
import ray
from jobs.common.ray_runtime import RayConfig, init_ray

init_ray(RayConfig(num_cpus=1))

@ray.remote
def noisy():
    log = logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner")
    log.warning("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.")
    log.error("MARK-ERROR the cleaner lost its placement group")
    print("[2026-11-27 05:29:49,871 E 1 2] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
          "ID: 'ab12' has constructor arguments in the object store and max_restarts > 0. If the arguments ...",
          file=sys.stderr, flush=True)
    print("MARK-PRINT step 1", flush=True)

ray.get(noisy.remote())
time.sleep(3)  # the driver prints streamed worker output from a thread
ray.shutdown()
'''


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TEXT_JOBS_VERBOSE")}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", DRIVER], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_worker_noise_stops_at_its_source_and_errors_reach_the_driver():
    out = _run({})
    assert "MARK-ERROR" in out and "MARK-PRINT" in out
    assert "Failed to query Ray Train Controller" not in out
    assert "PreemptionWatcher" not in out

    out = _run({"TEXT_JOBS_VERBOSE": "1"})
    assert "MARK-ERROR" in out and "MARK-PRINT" in out
    assert "Failed to query Ray Train Controller" in out
    assert "PreemptionWatcher" in out
