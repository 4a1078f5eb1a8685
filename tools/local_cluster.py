"""A Ray cluster of several nodes on one machine: for trying multi-node runs, and for the tests.

    python -m tools.local_cluster                 # head + 2 worker nodes, until Ctrl-C
    python -m tools.local_cluster --workers 3 --cpus-per-worker 1 --dashboard-port 8266
    python -m tools.local_cluster --auth token    # what `make cluster` runs: token authentication

Each node is a real raylet with its own address (the head the machine's, workers 127.0.0.2, ...;
Ray Train ranks nodes by IP, so one address for all would make every worker node_rank 0), its own
small object store, and no CPUs on the head, so work lands on the workers as on a real cluster.
The head detects a dead node within a few seconds (its health-check settings), and runs the
dashboard and job server for ``ray job submit --address http://127.0.0.1:<dashboard port>``. With
``auth="token"`` every node runs with ``RAY_AUTH_MODE=token`` and one token (``$RAY_AUTH_TOKEN`` if set,
else a new one), as a real cluster of Ray 2.60 does: drivers and ``ray job`` commands need both variables. It is Ray's own test machinery (``ray.cluster_utils``), the
way Ray's Train V2 and Ray Data fault-tolerance tests start theirs. Stopping this process stops
every node.

What it cannot give: separate disks. Every node sees the same local paths, so anything that must be
shared on a real cluster (checkpoints, outputs, corpora) is put on an object store in the tests
(a moto S3 server) and the jobs refuse local paths on a cluster of several nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass

from jobs.common.ray_runtime import free_local_port as free_port


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    workers: int = 2
    cpus_per_worker: int = 1
    object_store_mib: int = 80  # per node; Ray's minimum is 75 MiB
    dashboard: bool = True  # the job server, for `ray job submit`
    dashboard_port: int | None = None  # None: a free port
    health_check_period_ms: int = 500  # with 4 failures: a dead node is declared dead in about 2 s
    health_check_failure_threshold: int = 4
    auth: str = "disabled"  # "token": Ray's token authentication on every node (RAY_AUTH_MODE=token)


class LocalCluster:
    """The head and worker nodes of one simulated cluster (``ray.cluster_utils.Cluster`` underneath)."""

    def __init__(self, spec: ClusterSpec = ClusterSpec()):
        from ray.cluster_utils import Cluster

        self.spec = spec
        # What every node and every client of this cluster runs with. The mode is always explicit: with it
        # unset, Ray 2.60 turns token mode on for a process that starts a local Ray while ~/.ray/auth_token
        # exists (and sets it in os.environ), so nodes started later from that process would want a token
        # their clients do not send.
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN")
                         or secrets.token_hex(32)} if spec.auth == "token" else {"RAY_AUTH_MODE": "disabled"}
        if spec.auth == "token":
            # This process talks to the GCS too (starting the head, watching the nodes): it authenticates from
            # now on, and Ray's cached config must see the mode (what ray.init does when it enables tokens).
            from ray._raylet import Config

            os.environ.update(self.auth_env)
            Config.initialize("")
        self.dashboard_port = (spec.dashboard_port or free_port()) if spec.dashboard else None
        # The head keeps the machine's own address (a GCS on 127.0.0.1 would be advertised as that address
        # and never answer there); the worker nodes take loopback addresses of their own.
        # Every node's dashboard agent on a free port: the default (52365) is taken by any other Ray on the
        # machine, and a head whose agent cannot bind never takes a job ("No available agent to submit job").
        head = {"num_cpus": 0, "object_store_memory": spec.object_store_mib << 20,
                "include_dashboard": spec.dashboard, "dashboard_agent_listen_port": free_port(),
                "_system_config": {"health_check_period_ms": spec.health_check_period_ms,
                                   "health_check_failure_threshold": spec.health_check_failure_threshold,
                                   "health_check_initial_delay_ms": 0}}
        if spec.dashboard:
            head.update(dashboard_host="127.0.0.1", dashboard_port=self.dashboard_port)
        with self._node_env():
            self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self._next_ip = 2
        self.workers = [self.add_worker(wait=False) for _ in range(spec.workers)]
        with self._node_env():
            self.cluster.wait_for_nodes()
            if spec.dashboard:
                self.wait_for_job_server()

    def wait_for_job_server(self, timeout_s: float = 120.0) -> None:
        """Until the head's dashboard agent has registered: before that the job server refuses every
        submission ("No available agent to submit job"), for a few seconds or, on a loaded machine, longer."""
        from ray._private.ray_constants import KV_NAMESPACE_DASHBOARD
        from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

        head = self.cluster.head_node
        key = f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{head.node_id}".encode()
        gcs = head.get_gcs_client()
        deadline = time.monotonic() + timeout_s
        while not gcs.internal_kv_get(key, KV_NAMESPACE_DASHBOARD):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the head's dashboard agent did not register within {timeout_s:g} s")
            time.sleep(0.5)

    @property
    def address(self) -> str:
        """The GCS address (``RAY_ADDRESS`` for a driver on this machine)."""
        return self.cluster.address

    @property
    def dashboard_url(self) -> str | None:
        return f"http://127.0.0.1:{self.dashboard_port}" if self.dashboard_port else None

    def add_worker(self, cpus: int | None = None, wait: bool = True, resources: dict[str, float] | None = None):
        """One more worker node on the next loopback address (with custom ``resources``); returns its handle."""
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        with self._node_env():
            return self.cluster.add_node(wait=wait, num_cpus=self.spec.cpus_per_worker if cpus is None else cpus,
                                         node_ip_address=ip, object_store_memory=self.spec.object_store_mib << 20,
                                         dashboard_agent_listen_port=free_port(), resources=resources or {})

    @contextlib.contextmanager
    def _node_env(self):
        """The nodes are child processes: they take the mode and the token from this one's environment."""
        saved = {key: os.environ.get(key) for key in self.auth_env}
        os.environ.update(self.auth_env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def node(self, node_id: str):
        """The worker node with this id (hex), or None."""
        return next((n for n in self.cluster.worker_nodes if n.node_id == node_id), None)

    def remove(self, node, graceful: bool = False) -> float:
        """Kill a worker node's processes (a lost machine, not a drained one); the time it happened."""
        killed_at = time.time()
        self.cluster.remove_node(node, allow_graceful=graceful)
        return killed_at

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.cluster.global_state.node_table() if n["Alive"]]

    def actors(self) -> list[dict]:
        """Every actor the cluster knows of, with the node it runs on (no driver connection needed)."""
        return list(self.cluster.global_state.actor_table(None).values())

    def shutdown(self) -> None:
        self.cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--object-store-mib", type=int, default=80)
    parser.add_argument("--dashboard-port", type=int, default=None)
    parser.add_argument("--auth", choices=("disabled", "token"), default="disabled",
                        help="token: Ray's token authentication ($RAY_AUTH_TOKEN, else a new token)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(ClusterSpec(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                                       object_store_mib=args.object_store_mib, dashboard_port=args.dashboard_port,
                                       auth=args.auth))
    print(f"cluster up: a head (no CPUs), {args.workers} worker node(s) of {args.cpus_per_worker} CPU(s) on "
          f"127.0.0.2 ...")
    print(f"  drivers on this machine:  RAY_ADDRESS={cluster.address} python -m jobs.<job> ...")
    print(f"  job submission:           ray job submit --address {cluster.dashboard_url} --working-dir . -- "
          "python -m jobs.<job> ...")
    if args.auth == "token":
        print("  token authentication:     export " + " ".join(f"{k}={v}" for k, v in cluster.auth_env.items()))
    print("Ctrl-C stops every node.", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
