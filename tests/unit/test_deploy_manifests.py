"""deploy/rayjob-score-partitions.yaml: the Ray cluster it starts requires a token, submits from
inside the head pod, and admits network traffic only from its own pods and the KubeRay operator."""

from __future__ import annotations

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
