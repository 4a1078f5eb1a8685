"""cluster.yaml and deploy/runtime_env.yaml: valid for Ray's own tooling and in step with pyproject.toml.

Nothing here needs a cloud account: ``prepare_config`` + ``validate_config`` are the steps
``ray up`` runs on the file (defaults merged, then checked against Ray's cluster schema)
before it talks to AWS.
"""

from __future__ import annotations

import copy
import re
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def _pins() -> dict[str, str]:
    """Exact pins ("name[extras]==version") in pyproject.toml, by lower-case name."""
    text = (REPO / "pyproject.toml").read_text()
    return {name.lower(): version
            for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^",;\s]+)"', text)}


@pytest.fixture(scope="module")
def raw_cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def cluster(raw_cluster) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw_cluster))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_schema_validation(cluster):
    assert cluster["provider"]["type"] == "aws"
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_ray_validation_rejects_a_broken_copy(raw_cluster):
    """The validation above has teeth: an unknown key in a node type is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw_cluster)
    broken["available_node_types"]["gpu_worker"]["gpus_per_node"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cpu_head_and_autoscaling_multi_gpu_spot_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    gpu_workers = [t for t in workers if t["resources"].get("GPU", 0) >= 2]
    assert gpu_workers, "no multi-GPU worker type"
    for worker in gpu_workers:
        assert worker.get("min_workers", 0) < worker["max_workers"], "workers do not autoscale"
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert sum(t["max_workers"] for t in gpu_workers) <= cluster["max_workers"]


def test_ray_images_match_the_ray_pin(cluster):
    ray_pin = _pins()["ray"]
    docker = cluster["docker"]
    images = [docker[key] for key in ("image", "head_image", "worker_image") if docker.get(key)]
    images += [t["docker"][key] for t in cluster["available_node_types"].values()
               for key in ("worker_image", "head_image") if t.get("docker", {}).get(key)]
    assert images
    for image in images:
        repo, _, tag = image.partition(":")
        assert repo.startswith("rayproject/ray"), image
        assert tag.split("-")[0] == ray_pin, f"{image} does not run ray {ray_pin} (pyproject.toml)"
    worker_images = [docker.get("worker_image") or docker.get("image")]
    assert all(image.endswith("-gpu") or "-cu" in image for image in worker_images), "GPU workers need a CUDA image"


def test_every_node_installs_the_project_with_a_cuda_torch_at_the_pin(cluster):
    pins = _pins()
    mounts = {remote: local for remote, local in cluster["file_mounts"].items()}
    project_dirs = [remote for remote, local in mounts.items() if Path(local) == Path(".")]
    assert project_dirs, "the project source is not mounted on the nodes"
    # prepare_config merges setup_commands into both the head's and the workers' setup.
    for role in ("head_setup_commands", "worker_setup_commands"):
        commands = "\n".join(cluster[role])
        torch_at = commands.find(f"torch=={pins['torch']}")
        project_at = max(commands.find(f"pip install -q -e {d}") for d in project_dirs)
        assert torch_at >= 0, f"{role}: no torch=={pins['torch']} install"
        assert project_at >= 0, f"{role}: the project ({project_dirs}) is not pip-installed"
        assert project_at > torch_at, f"{role}: the project must be installed after its torch build"
        assert "torch.version.cuda" in commands[torch_at:], f"{role}: nothing checks torch is a CUDA build"
        assert "--no-deps cn-clip==" in commands  # the vocabulary package, as the Makefile installs it
        # a version given on the command line must agree with the pins
        for name, version in re.findall(r"\b(ray|torch)==([0-9][^\s\"']*)", commands):
            assert version == pins[name], f"{role}: {name}=={version} but pyproject pins {pins[name]}"


def test_nodes_share_the_token_and_enable_token_auth(cluster):
    """Ray 2.60 job submission over token auth: every node must hold the same token."""
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["docker"]["run_options"])


def test_code_sync_and_job_upload_exclude_environments_data_and_runs(cluster):
    runtime_env = yaml.safe_load((REPO / "deploy/runtime_env.yaml").read_text())
    for folder in (".venv", "data", "runs", "mlruns", "mlartifacts", "mlflow.db", "artifacts"):
        assert any(e.strip("/") == folder for e in runtime_env["excludes"]), folder
        assert any(e.strip("/") == folder for e in cluster["rsync_exclude"]), folder
    assert set(runtime_env) <= {"excludes", "env_vars"}, "nodes have the project installed: no pip/conda here"


def test_working_dir_package_is_small_without_help_from_gitignore(tmp_path: Path):
    """Build the package `ray job submit --working-dir .` uploads, from this checkout (with its
    .venv, data and runs present) and with .gitignore ignored: the excludes alone keep it small."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

    runtime_env = yaml.safe_load((REPO / "deploy/runtime_env.yaml").read_text())
    package = tmp_path / "working_dir.zip"
    create_package(str(REPO), package, include_gitignore=False, excludes=runtime_env["excludes"])
    size = package.stat().st_size
    print(f"working_dir package: {size / MIB:.2f} MiB")
    assert size < 10 * MIB < GCS_STORAGE_MAX_SIZE
    names = zipfile.ZipFile(package).namelist()
    assert "jobs/finetune_classifier.py" in names and "configs/finetune_classifier.tiny.yaml" in names
    assert not [n for n in names if n.split("/")[0] in {".venv", "data", "runs", "artifacts", "mlartifacts"}
                or n.endswith("mlflow.db")]
