"""Connect to Ray: an existing cluster when one is named, else a local instance started by the job."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from jobs.common import console

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS (set by `ray job submit`), else start a local Ray
    num_cpus: int | None = None  # local Ray only; None: all cores
    num_gpus: int | None = None  # local Ray only


def init_ray(config: RayConfig) -> None:
    """Idempotent: a job run inside a test session or a Ray job reuses the running instance."""
    import ray

    console.install()
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    # Every worker process of the job installs the same log filters (Ray Train's own actors included).
    runtime_env = None if console.verbose() or _job_sets_setup_hook() else \
        {"worker_process_setup_hook": console.worker_setup_hook()}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=config.num_cpus, num_gpus=config.num_gpus, include_dashboard=False,
                 log_to_driver=True, runtime_env=runtime_env)
        log.info("started a local Ray: %s", ray.cluster_resources())
    console.quiet_ray_driver()


def _job_sets_setup_hook() -> bool:
    """A job submitted with its own setup hook keeps it: Ray refuses to merge two (a conflict)."""
    return "worker_process_setup_hook" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "").lower()


def check_cpu_budget(demands: dict[str, float]) -> None:
    """Fail before any compute when the job's own stages cannot all run at once on this Ray.

    Training workers, read tasks and tokenizer actors run concurrently; if their CPU
    reservations exceed the cluster's CPUs, Ray Data waits forever for a slot. On an
    autoscaling cluster more nodes may come, so only a fixed (local) Ray is checked.
    """
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    need = sum(demands.values())
    if need > total + 1e-9:
        parts = ", ".join(f"{name} {cpus:g}" for name, cpus in demands.items())
        raise ValueError(f"the job reserves {need:g} CPUs ({parts}) but this Ray has {total:g}: lower "
                         "scaling.cpus_per_worker or the data stages' CPUs, or use fewer workers")
