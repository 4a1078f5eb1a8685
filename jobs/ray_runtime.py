"""Connect to Ray: an existing cluster when one is named, else a local instance started by the job."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS (set by `ray job submit`), else start a local Ray
    num_cpus: int | None = None  # local Ray only; None: all cores
    num_gpus: int | None = None  # local Ray only


def init_ray(config: RayConfig) -> None:
    """Idempotent: a job run inside a test session or a Ray job reuses the running instance."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(num_cpus=config.num_cpus, num_gpus=config.num_gpus, include_dashboard=False,
             log_to_driver=True)
    log.info("started a local Ray: %s", ray.cluster_resources())
