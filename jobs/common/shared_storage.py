"""Paths every node must see: refused before any work when a cluster of several nodes cannot share them.

On a cluster, Ray Train's workers write checkpoints, Ray Data's tasks read the inputs and write the
outputs, and scoring actors load the model, each on whichever node runs it. A local path (or a
sqlite MLflow store) names a different, or no, place on each node: checkpoints scatter, reads fail
on some nodes only, a scoring run half-writes. Ray's own check (a marker file written on the head,
looked for by the workers) passes falsely where the nodes share a disk, one machine running several
raylets among them, so the job checks for itself: with more than one node alive, every such path
must be a URI of a shared store (``s3://``, ``gs://``, ``hdfs://``, ...), lie on a network
filesystem mount (NFS, CephFS, Lustre, ...), or lie under a prefix the config declares shared
(``ray.shared_paths``, for a volume mounted on every node that this check cannot see as one).

A job that starts its own Ray is one node: nothing to check, and nothing is started for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from jobs.common.config import ConfigError

# Filesystem types of /proc/mounts that reach the same storage from every node.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "cephfs", "lustre", "gpfs",
                                 "beegfs", "glusterfs", "fuse.glusterfs", "fuse.cephfs", "fuse.juicefs",
                                 "fuse.s3fs", "fuse.gcsfuse", "fuse.mountpoint-s3", "fuse.sshfs", "9p", "virtiofs",
                                 "efs", "fuse.efs", "fuse.weka", "wekafs", "alluxio", "fuse.alluxio"})


def _mounts(table: str = "/proc/mounts") -> list[tuple[str, str]]:
    """(mount point, filesystem type), longest mount point first."""
    try:
        lines = Path(table).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            mounts.append((fields[1].replace("\\040", " "), fields[2]))
    return sorted(mounts, key=lambda m: len(m[0]), reverse=True)


def filesystem_type(path: str, table: str = "/proc/mounts") -> str | None:
    """The type of the filesystem ``path`` lies on (its nearest existing parent's), per /proc/mounts."""
    resolved = os.path.realpath(path)
    for mount, kind in _mounts(table):
        if resolved == mount or resolved.startswith(mount.rstrip("/") + "/"):
            return kind
    return None


def is_shared(path: str, declared: tuple[str, ...] = (), table: str = "/proc/mounts") -> bool:
    if "://" in path:
        return not path.startswith("file://")
    resolved = os.path.realpath(path)
    if any(resolved == os.path.realpath(p) or resolved.startswith(os.path.realpath(p).rstrip("/") + "/")
           for p in declared):
        return True
    return filesystem_type(path, table) in NETWORK_FILESYSTEMS


def node_local_tracking(uri: str) -> bool:
    """An MLflow store only this node can reach: a sqlite file, a local folder or ``file://``."""
    if uri.startswith("databricks"):  # "databricks", "databricks://profile", "databricks-uc"
        return False
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_shared(paths: dict[str, str | None], tracking_uri: str | None, nodes: int,
                 declared: tuple[str, ...] = (), table: str = "/proc/mounts") -> None:
    """Raise ``ConfigError`` naming every setting whose path one node of ``nodes`` cannot share."""
    if nodes <= 1:
        return
    local = {key: path for key, path in paths.items() if path and not is_shared(path, declared, table)}
    problems = [f"{key}: {path} is a local path" for key, path in local.items()]
    if tracking_uri and node_local_tracking(tracking_uri):
        problems.append(f"the MLflow tracking URI {tracking_uri} is a store on this node only")
    if problems:
        raise ConfigError(
            f"this Ray cluster has {nodes} nodes, and each reads and writes these where it runs: "
            + "; ".join(problems) + ". Put them on storage every node reaches (s3://bucket/..., gs://..., or a "
            "network filesystem mounted at the same path on every node; a volume this check cannot see as "
            "shared goes in ray.shared_paths) and track to an MLflow server (MLFLOW_TRACKING_URI=http://host:port)")


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def require_shared(ray_config, paths: dict[str, str | None], tracking_uri: str | None) -> None:
    """On a cluster the job connects to: connect, count its nodes, and refuse node-local paths (before any work)."""
    from jobs.common.ray_runtime import init_ray, named_address

    if not named_address(ray_config):
        return  # the job's own Ray: one node
    init_ray(ray_config)
    check_shared(paths, tracking_uri, alive_nodes(), tuple(ray_config.shared_paths))


def local_model_dir(ref: str | None) -> str | None:
    """A model reference that is a local directory (read by workers on every node), else None."""
    return ref if ref and "://" not in ref and not ref.startswith(("models:", "runs:")) and os.path.isdir(ref) \
        else None
