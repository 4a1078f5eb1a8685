"""deploy/rayjob-score-partitions.yaml: the Ray cluster it starts requires a token, submits from
inside the head pod, and admits network traffic only from its own pods and the KubeRay operator;
the CronJob's poller outlasts a few failed polls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/rayjob-score-partitions.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def rayjob(manifests) -> dict:
    return yaml.safe_load(manifests["ConfigMap"]["data"]["rayjob.yaml"])


def _pod_templates(rayjob: dict) -> list[dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


def test_the_cluster_requires_a_token_from_a_secret(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "score-partitions-ray-token"}
    assert int(cluster["rayVersion"].split(".")[1]) >= 52  # Ray's token auth starts at 2.52
    for template in _pod_templates(rayjob):  # nothing switches it off again in a container
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", "token") == "token"


def test_the_job_server_is_reached_on_localhost_or_by_the_operator_only(rayjob, manifests):
    assert rayjob["spec"]["submissionMode"] == "SidecarMode"  # the submitter shares the head pod's localhost
    # The job server listens on the pod network, deliberately (the KubeRay operator polls it there for the
    # job's status; cluster.yaml's binds 127.0.0.1): so the NetworkPolicy must cover every Ray pod and
    # admit nobody but the cluster's own pods and the operator, and only the operator on the job server's port.
    assert rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    policy = manifests["NetworkPolicy"]["spec"]
    labels = policy["podSelector"]["matchLabels"]
    assert labels and all(t["metadata"]["labels"].items() >= labels.items() for t in _pod_templates(rayjob))
    assert policy["policyTypes"] == ["Ingress"]
    own_pods, operator = policy["ingress"]
    assert own_pods == {"from": [{"podSelector": {"matchLabels": labels}}]}
    assert [p["port"] for p in operator["ports"]] == [8265]
    assert all("namespaceSelector" in peer and "podSelector" in peer for peer in operator["from"])
    assert all(rule.get("from") for rule in policy["ingress"])  # a rule without `from` would admit everyone


# ---------------------------------------------------------------- the CronJob's poller, run by a real shell

def _poller(manifests) -> str:
    pod = manifests["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    return container["args"][0]


def _run_poller(script: str, tmp_path: Path, replies: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run the script with a fake ``kubectl`` (``get`` answers ``replies`` in turn: a state, or ``!`` to fail
    as an unreachable API server does) and a ``sleep`` that returns at once; return the run and the gets."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "replies").write_text("".join(f"{r}\n" for r in replies))
    (bin_dir / "kubectl").write_text(f"""#!/bin/sh
if [ "$1" = create ]; then echo rayjob.ray.io/score-partitions-x1; exit 0; fi
echo get >> {tmp_path}/gets
reply=$(sed -n "$(wc -l < {tmp_path}/gets)p" {tmp_path}/replies)
if [ "$reply" = "!" ] || [ -z "$reply" ]; then
  echo "The connection to the server 10.0.0.1:6443 was refused" >&2; exit 1
fi
printf %s "$reply"
""")
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("kubectl", "sleep"):
        (bin_dir / tool).chmod(0o755)
    done = subprocess.run(["/bin/sh", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=60)
    gets = len((tmp_path / "gets").read_text().splitlines()) if (tmp_path / "gets").exists() else 0
    return done, gets


def test_one_failed_poll_does_not_fail_the_job_while_the_rayjob_runs_on(manifests, tmp_path):
    done, gets = _run_poller(_poller(manifests), tmp_path, ["Running/RUNNING", "!", "Running/RUNNING", "!", "!",
                                                            "Complete/SUCCEEDED"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert gets == 6 and "rayjob.ray.io/score-partitions-x1: SUCCEEDED" in done.stdout
    assert "polling failed (1 of 10 in a row)" in done.stderr and "(2 of 10 in a row)" in done.stderr


def test_a_failed_rayjob_still_fails_the_job(manifests, tmp_path):
    done, _ = _run_poller(_poller(manifests), tmp_path, ["!", "Complete/FAILED"])
    assert done.returncode == 1 and "score-partitions-x1: FAILED" in done.stdout


def test_the_poller_gives_up_after_a_bounded_run_of_failed_polls(manifests, tmp_path):
    done, gets = _run_poller(_poller(manifests), tmp_path, ["Running/RUNNING"])  # then the API never answers
    assert done.returncode == 1 and gets == 1 + 10
    assert "giving up; the RayJob may still run: kubectl get rayjob.ray.io/score-partitions-x1" in done.stderr
