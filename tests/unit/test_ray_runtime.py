"""Where a job's Ray workers look for the State API (jobs.common.ray_runtime), without starting Ray."""

from __future__ import annotations

import json
import socket

from jobs.common import ray_runtime


def test_the_unserved_address_refuses_connections_and_stays_the_same():
    address = ray_runtime.unserved_local_address()
    assert address == ray_runtime.unserved_local_address()
    port = int(address.rsplit(":", 1)[1])
    with socket.socket() as client:
        assert client.connect_ex(("127.0.0.1", port)) != 0  # refused: bound, never listening
    with socket.socket() as other:  # and no other server can take it while the job lives
        try:
            other.bind(("127.0.0.1", port))
            taken = False
        except OSError:
            taken = True
    assert taken


def test_workers_of_a_named_cluster_are_pinned_to_it(monkeypatch):
    monkeypatch.delenv(ray_runtime.STATE_API_ENV, raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert ray_runtime._pinned_cluster_env("10.0.0.5:6379") == {"RAY_ADDRESS": "10.0.0.5:6379"}
    for address in ("auto", "ray://head:10001", "http://head:8265"):
        assert ray_runtime._pinned_cluster_env(address) == {}


def test_a_submitted_jobs_own_ray_address_is_not_overridden(monkeypatch):
    monkeypatch.delenv(ray_runtime.STATE_API_ENV, raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {"RAY_ADDRESS": "10.0.0.9:6379"}}}))
    assert ray_runtime._pinned_cluster_env("10.0.0.5:6379") == {}  # Ray would refuse two values (a conflict)


def test_a_local_rays_system_settings_leave_what_the_user_exported_to_ray(monkeypatch):
    monkeypatch.delenv("RAY_enable_metrics_collection", raising=False)
    assert ray_runtime.local_system_config({}) == {"enable_metrics_collection": False}
    monkeypatch.setenv("RAY_enable_metrics_collection", "1")  # a _system_config entry would override it
    assert ray_runtime.local_system_config({"object_spilling_threshold": 0.9}) == {"object_spilling_threshold": 0.9}
