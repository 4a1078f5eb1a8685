"""Connect to Ray: an existing cluster when one is named, else a local instance started by the job.

Immune to other Ray instances on the same machine. Ray's State API (which Ray Train's
placement-group cleaner asks once a second whether the training controller is still alive, and
Ray Data's hang detector asks about tasks) finds its server through the cluster's record of a
dashboard address. A Ray started with ``include_dashboard=False`` still records the default one,
``127.0.0.1:8265``; when another Ray on the machine (a notebook, a test run, a second job) starts
its dashboard there, it answers for ours: "no such actor", so the cleaner removes our training
placement group and every worker dies ("A worker health check failed"). So the workers of a Ray
this module starts are told where their State API is (``RAY_API_SERVER_ADDRESS``): their own
dashboard when it runs, else an address this process holds and never serves, which refuses at
once (the cleaner then logs that it cannot ask and keeps waiting, as it does without a dashboard
anywhere). Workers of a cluster the job connects to are pinned to its address (``RAY_ADDRESS``), so
a second Ray on a node never becomes "the latest cluster" they find by themselves. A job that starts
its own Ray starts a new one even where ``ray start`` recorded another cluster's address for the
machine (a bare ``ray.init()`` joins that cluster, or waits on it when it is gone).

What a Ray the job starts for itself leaves out, being one machine that nothing else watches: the
export of Ray's Prometheus metrics (no Prometheus scrapes a job's own Ray; ``ray.init`` 6.6 -> 5.1 s
on 2 cores without it), and Ray Train's preemption watcher, an actor process of its own that asks the
cluster every 5 s whether a node is being drained: a single machine is not. And its Train controller
polls the workers every 0.5 s, not 2 s (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``): a worker's report waits
in a queue of one until the next poll takes it, and the end of a run is seen at a poll, so a short
run spent seconds waiting on a controller that had nothing else to do (a tiny 3-epoch fine-tune on
2 cores: 12.3 -> 9.3 s from its first step to the driver's summary, 5 runs each). A poll is one call
per worker. A cluster the job connects to keeps all three as its operator set them; a variable the
user sets keeps its value (``RAY_<setting>`` for the system config, which Ray would otherwise override).

Left as Ray has it: how many idle worker processes a local Ray keeps (``num_workers_soft_limit``: as many
as it has free CPUs; the rest end after a second idle). Keeping twice the CPUs stopped the tokenize
stage from starting processes cold in each execution, but showed no gain beyond the noise on 2 cores
and the demo's first step came 1.0-1.5 s later (2026-12-04, docs/results.md).

A sweep's local Ray serves its State API (its dashboard, on a free port): there the driver outlives
its trials, and a trial Tune stops ends its Train controller, whose workers' placement group (by Ray's
rules scoped to the driver) only the cleaner removes once the State API tells it the controller is
dead. Without one, a stopped trial's CPUs stay reserved until the sweep ends and the next trial waits
for them forever. A single job does not need it: its placement group goes with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass

from jobs.common import console
from jobs.common.config import ConfigError

log = logging.getLogger(__name__)

STATE_API_ENV = "RAY_API_SERVER_ADDRESS"  # read by ray.util.state before any address lookup
RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOCAL_SYSTEM_CONFIG = {"enable_metrics_collection": False}  # a local Ray's settings (see the module's note)
LOCAL_PROCESS_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # its processes' (the Train controller's)
                     "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Which Ray the job runs on: a cluster's, or one it starts on this machine."""
    address: str | None = None  # None: $RAY_ADDRESS (set by `ray job submit`), else start a local Ray
    num_cpus: int | None = None  # local Ray only; None: all cores
    num_gpus: int | None = None  # local Ray only
    # Local paths every node of the cluster sees (a volume mounted on each node that is not a network
    # filesystem /proc/mounts can name): accepted as shared storage (jobs.common.shared_storage)
    shared_paths: tuple[str, ...] = ()


def named_address(config: RayConfig) -> str | None:
    """The cluster the job connects to, when one is named (the config, else ``RAY_ADDRESS``)."""
    return config.address or os.environ.get(RAY_ADDRESS_ENV) or None


_held_state_api_socket: socket.socket | None = None


def unserved_local_address() -> str:
    """``http://127.0.0.1:<port>`` on a port this process keeps bound and never listens on.

    A connection there is refused at once, and no other process can bind the port while this one
    lives: no other Ray's dashboard can ever answer on it. (The socket is not inherited by children.)
    """
    global _held_state_api_socket
    if _held_state_api_socket is None:
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.bind(("127.0.0.1", 0))
        _held_state_api_socket = held
    return f"http://127.0.0.1:{_held_state_api_socket.getsockname()[1]}"


@contextlib.contextmanager
def _environment(**values: str):
    """Set variables for the processes started inside the block (Ray's raylet copies the environment)."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_local_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (released: the caller's server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_system_config(overrides: dict) -> dict:
    """The ``_system_config`` of a Ray the job starts: ours, less what the user exported, then ``overrides``."""
    # Ray reads RAY_<setting> too, but a _system_config entry wins over it: an exported setting stays the user's
    return {**{key: value for key, value in LOCAL_SYSTEM_CONFIG.items() if f"RAY_{key}" not in os.environ},
            **overrides}


def start_local_ray(num_cpus: int | None, num_gpus: int | None = None, runtime_env: dict | None = None,
                    log_to_driver: bool = True, serve_state_api: bool = False, **init_kwargs) -> None:
    """``ray.init`` of a new local instance whose workers ask only their own Ray's State API.

    ``serve_state_api``: start its dashboard (on a free port of 127.0.0.1), which serves that API;
    else the workers are pointed at an address nothing answers. The driver's own environment is
    restored afterwards: a ``ray job submit`` it runs later must not inherit the address (the
    variable overrides ``--address`` there).
    """
    import ray

    dashboard: dict = {"include_dashboard": False}
    state_api = os.environ.get(STATE_API_ENV)
    if serve_state_api and not state_api:
        port = free_local_port()
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
        state_api = f"http://127.0.0.1:{port}"
    system_config = local_system_config(init_kwargs.pop("_system_config", {}))
    process_env = {key: value for key, value in LOCAL_PROCESS_ENV.items() if key not in os.environ}
    with _environment(**{STATE_API_ENV: state_api or unserved_local_address()}, **process_env):
        # "local": a new instance even where `ray start` (or a test's simulated cluster) left its address
        # in /tmp/ray/ray_current_cluster, which a bare ray.init() would join (or wait on, when it is gone)
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, log_to_driver=log_to_driver,
                           runtime_env=runtime_env, _system_config=system_config, **dashboard, **init_kwargs)
    if dashboard["include_dashboard"]:
        served = context.dashboard_url
        if not served:
            log.warning("the local Ray's dashboard did not start: a stopped trial's placement group is not "
                        "removed until the sweep ends")
        elif served.rsplit(":", 1)[-1] != str(dashboard["dashboard_port"]):
            ray.shutdown()  # its workers would ask a port another process holds: not ours to trust
            raise RuntimeError(f"the local Ray's dashboard took {served}, not {state_api} (taken meanwhile); "
                               "run again")


def _pinned_cluster_env(address: str) -> dict[str, str]:
    """``RAY_ADDRESS`` for the workers of a cluster given as ``host:port`` (a job's own setting wins)."""
    if "://" in address or address in ("auto", "local") or os.environ.get(STATE_API_ENV):
        return {}
    submitted = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    try:
        job_env = json.loads(submitted).get("runtime_env", {}).get("env_vars", {}) if submitted else {}
    except (ValueError, AttributeError):
        job_env = {}
    return {} if RAY_ADDRESS_ENV in (job_env or {}) else {RAY_ADDRESS_ENV: address}


def init_ray(config: RayConfig, serve_state_api: bool = False) -> None:
    """Idempotent: a job run inside a test session or a Ray job reuses the running instance.

    ``serve_state_api``: a local Ray started here serves its State API (see the module's note).
    """
    import ray

    console.install()
    if ray.is_initialized():
        return
    address = named_address(config)
    # Every worker process of the job installs the same log filters (Ray Train's own actors included).
    runtime_env: dict = {} if console.verbose() or _job_sets_setup_hook() else \
        {"worker_process_setup_hook": console.worker_setup_hook()}
    if address:
        pinned = _pinned_cluster_env(address)
        if pinned:
            runtime_env["env_vars"] = pinned
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env or None)
    else:
        start_local_ray(config.num_cpus, config.num_gpus, runtime_env=runtime_env or None,
                        serve_state_api=serve_state_api)
        log.info("started a local Ray: %s", ray.cluster_resources())
    console.quiet_ray_driver()


def _job_sets_setup_hook() -> bool:
    """A job submitted with its own setup hook keeps it: Ray refuses to merge two (a conflict)."""
    return "worker_process_setup_hook" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "").lower()


def check_cpu_budget(demands: dict[str, float], remedy: str = "lower scaling.cpus_per_worker or the data stages' "
                     "CPUs, or use fewer workers") -> None:
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
        # a setting that cannot fit this Ray: exit 2 with this line, not a traceback
        raise ConfigError(f"the job reserves {need:g} CPUs ({parts}) but this Ray has {total:g}: {remedy}")
