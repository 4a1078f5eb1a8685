"""Beyond one node: the jobs on a simulated cluster of several raylets (tools/local_cluster.py), with the
corpus, checkpoints and outputs on an S3 endpoint (moto) and MLflow on a real server; nodes are removed
for real while the jobs run (``ray.cluster_utils.Cluster.remove_node`` kills a node's processes).

The jobs run as users run them against a cluster: separate processes with ``RAY_ADDRESS`` set. The
head has no CPUs, so every worker, task and actor runs on a worker node. The model directory is a
local path declared shared (``ray.shared_paths``): on one machine it is, as a volume mounted on
every node would be.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.paths import filesystem_for
from data_pipeline.storage import Storage
from jobs.common.injected_delay import DELAY_END_ENV
from jobs.scoring.predictors import PREDICT_DELAY_ENV
from jobs.scoring.publish import MANIFEST
from jobs.scoring.sink import read_manifest
from jobs.train.callbacks import STEP_DELAY_ENV
from s3_faults import faulty_s3
from tiny_training import TINY, TOLERANCE, assert_history_exactly_once, latest_recorded_checkpoint
from waiting import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "cluster"
REGISTERED = "cluster-sentiment"


@pytest.fixture(scope="module")
def cluster():
    from tools.local_cluster import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(workers=3, cpus_per_worker=1))
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def s3(cluster, session_dir: Path, tiny_corpus: Path):
    with faulty_s3(session_dir / "multi-node-s3", (BUCKET,)) as store:
        fs, _ = filesystem_for(f"s3://{BUCKET}")
        for split in ("train", "val", "test"):
            with open(tiny_corpus / f"{split}.parquet", "rb") as src, \
                    fs.open_output_stream(f"{BUCKET}/corpus/{split}.parquet") as out:
                out.write(src.read())
        yield store


@pytest.fixture(scope="module")
def tracking(mlflow_server: str) -> str:
    return mlflow_server  # the session's server; the cluster-sentiment model and these run names are this module's


def _env(cluster, s3, tracking: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    return {**env, **cluster.auth_env, "RAY_ADDRESS": cluster.address, "AWS_ENDPOINT_URL": s3.url,
            "MLFLOW_TRACKING_URI": tracking,
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **extra}


def _command(module: str, config: Path, overrides: list[str]) -> list[str]:
    command = [sys.executable, "-m", module, "--config", str(config)]
    for item in overrides:
        command += ["--set", item]
    return command


def _start(module: str, config: Path, overrides: list[str], env: dict, log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    return subprocess.Popen(_command(module, config, overrides), cwd=REPO, env=env, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(process: subprocess.Popen, log: Path, timeout_s: float = 900) -> tuple[int, str]:
    try:
        code = process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return code, log.read_text(errors="replace")



def _training(name: str, tiny_model_dir: Path, *extra: str) -> list[str]:
    corpus = f"s3://{BUCKET}/corpus"
    return [f"data.train={corpus}/train.parquet", f"data.val={corpus}/val.parquet",
            f"data.test={corpus}/test.parquet", f"model.name_or_path={tiny_model_dir}",
            f"ray.shared_paths=[{tiny_model_dir.parent}]", f"run.storage_path=s3://{BUCKET}/ray", f"run.name={name}",
            "scaling.placement_strategy=SPREAD", f"tracking.registered_model={REGISTERED}", *extra]


def _run_of(tracking: str, name: str):
    client = mlflow.MlflowClient(tracking, registry_uri=tracking)  # not this process's registry (the session's)
    experiment = client.get_experiment_by_name("finetune-tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.ray_run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _registered(client, run_id: str) -> bool:
    """The run registered its model, and @candidate points at that version."""
    return client.get_model_version_by_alias(REGISTERED, "candidate").run_id == run_id


def _worker_nodes(cluster, class_prefix: str) -> list[str]:
    """Node ids of the live actors whose class name starts with ``class_prefix``."""
    return sorted({a["Address"]["NodeID"] for a in cluster.actors()
                   if a.get("State") == "ALIVE" and str(a.get("ActorClassName", "")).startswith(class_prefix)})


def _checkpoints(name: str) -> set[str]:
    """The run's checkpoint folders (``epoch-<e>-step-<s>``) on the shared storage."""
    fs, _ = filesystem_for(f"s3://{BUCKET}")
    return {info.base_name for info in Storage(fs).list(f"{BUCKET}/ray/{name}") if info.base_name.startswith("epoch-")}


def _latest_recorded_checkpoint(name: str) -> str | None:
    return latest_recorded_checkpoint(f"s3://{BUCKET}/ray/{name}")


def _recorded_checkpoint(name: str) -> bool:
    return _latest_recorded_checkpoint(name) is not None


# ------------------------------------------------------------------ the cluster a user starts (make cluster)

def _printed(line_start: str, text: str) -> str:
    return next(line.split(line_start, 1)[1].strip() for line in text.splitlines() if line_start in line)


def test_the_users_cluster_takes_ray_job_submit_with_its_token_and_stops_cleanly(session_dir):
    """What `make cluster` runs: a head and two worker nodes, a job submitted with the printed token lands on
    the worker nodes, a client without the token is refused, and SIGTERM stops every node."""
    out = session_dir / "user-cluster.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    tool = subprocess.Popen([sys.executable, "-m", "tools.local_cluster", "--workers", "2", "--auth", "token"],
                            cwd=REPO, env=env, stdout=open(out, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: "Ctrl-C stops" in out.read_text() or tool.poll() is not None, 180, "the cluster")
        text = out.read_text()
        assert tool.poll() is None, text[-3000:]
        dashboard = _printed("ray job submit --address", text).split()[0]
        token_env = dict(item.split("=", 1) for item in _printed("export", text).split())
        assert token_env["RAY_AUTH_MODE"] == "token" and len(token_env["RAY_AUTH_TOKEN"]) == 64
        script = ("import ray; ray.init(); print('NODES', sorted(n['NodeManagerAddress'] for n in ray.nodes() "
                  "if n['Alive'] and n['Resources'].get('CPU')))")
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", dashboard, "--",
                  sys.executable, "-c", script]
        done = subprocess.run(submit, cwd=REPO, env={**env, **token_env}, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "NODES ['127.0.0.2', '127.0.0.3']" in done.stdout  # the job saw the two worker nodes
        refused = subprocess.run(submit, cwd=REPO, env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode != 0 and "NODES" not in refused.stdout
    finally:
        if tool.poll() is None:
            tool.send_signal(signal.SIGTERM)
        try:
            code = tool.wait(timeout=60)
        finally:
            if tool.poll() is None:
                os.killpg(tool.pid, signal.SIGKILL)
    assert code == 0
    gcs = _printed("RAY_ADDRESS=", text).split()[0]
    for host, port in (gcs.rsplit(":", 1), dashboard.removeprefix("http://").rsplit(":", 1)):
        with socket.socket() as probe:  # the head's GCS and job server are gone with the tool
            assert probe.connect_ex((host, int(port))) != 0, f"{host}:{port} still answers"


# ------------------------------------------------------------------ shared storage enforced

def test_node_local_paths_are_refused_before_any_work(cluster, s3, session_dir, tiny_corpus, tiny_model_dir):
    log = session_dir / "multi-node-refused.log"
    overrides = [f"data.train={tiny_corpus / 'train.parquet'}", f"data.val={tiny_corpus / 'val.parquet'}",
                 f"data.test={tiny_corpus / 'test.parquet'}", f"model.name_or_path={tiny_model_dir}",
                 f"run.storage_path={session_dir / 'node-local-ray'}", "run.name=refused"]
    env = _env(cluster, s3, f"sqlite:///{session_dir / 'node-local.db'}")
    code, output = _finish(_start("jobs.finetune_classifier", TINY, overrides, env, log), log, 300)
    assert code == 2, output[-3000:]
    for key in ("run.storage_path", "data.train", "data.val", "data.test", "model.name_or_path", "sqlite:///"):
        assert key in output, key
    assert "4 nodes" in output and "s3://" in output
    assert not (session_dir / "node-local-ray").exists(), "something was written before the refusal"


# ------------------------------------------------------------------ training on several nodes

def _assert_spread(placements: list[dict]) -> None:
    """Two ranks, one per worker node (127.0.0.2, ...; the head keeps the machine's address)."""
    assert sorted(p["rank"] for p in placements) == [0, 1]
    assert len({p["node_id"] for p in placements}) == 2, placements  # one worker per node
    assert sorted(p["node_rank"] for p in placements) == [0, 1]
    assert all(p["node_ip"].startswith("127.0.0.") for p in placements), placements


def test_training_spreads_over_nodes_and_a_lost_node_resumes_from_the_last_checkpoint(
        cluster, s3, tracking, session_dir, tiny_model_dir, tiny_reference, mlflow_uri):
    """A run spread one rank per node, a node removed mid-run: it resumes on two live nodes and still matches the
    session's one-node reference run (same seed, a local Ray) step for step. One run proves both: spreading
    and resuming share their whole start-up."""
    name, log = "node-lost", session_dir / "multi-node-lost.log"
    node_gone = session_dir / "node-lost.removed"  # the slowed steps end there: the rest goes at full speed
    started = time.time()
    process = _start("jobs.finetune_classifier", TINY, _training(name, tiny_model_dir, "run.max_failures=2"),
                     _env(cluster, s3, tracking, **{STEP_DELAY_ENV: "0.5", DELAY_END_ENV: str(node_gone)}), log)
    try:
        wait_for(lambda: _recorded_checkpoint(name) or process.poll() is not None, 600, "the first checkpoint")
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(1.0)  # into the second epoch
        nodes = _worker_nodes(cluster, "RayTrainWorker")
        assert len(nodes) == 2, nodes
        lost = cluster.node(nodes[-1])
        killed_at = cluster.remove(lost)
        node_gone.touch()
        cluster.add_worker()  # a replacement, as an autoscaler would bring
    finally:
        code, output = _finish(process, log)
    assert code == 0, output[-4000:]
    client, run = _run_of(tracking, name)
    tags = run.data.tags
    assert tags["restarts"] == "1" and run.info.status == "FINISHED"
    resumed = int(tags["resumed_from_steps"].split(",")[-1])
    assert resumed > 0  # from the epoch-0 checkpoint, not from scratch
    before, after = (json.loads(tags[f"train_nodes_from_step_{step}"]) for step in (0, resumed))
    _assert_spread(before)
    assert {p["node_ip"] for p in before} <= {"127.0.0.2", "127.0.0.3", "127.0.0.4"}  # the first worker nodes
    _assert_spread(after)
    assert json.loads(tags["train_nodes"]) == after  # the latest attempt's placement
    assert nodes[-1] in {p["node_id"] for p in before}  # the removed node held a rank
    assert nodes[-1] not in {p["node_id"] for p in after}
    assert tags["replicas_equal"] == "true"
    assert_history_exactly_once(client, run.info.run_id, mlflow.MlflowClient(mlflow_uri), tiny_reference.run_id)
    assert abs(run.data.metrics["test_loss"] - tiny_reference.metrics["test_loss"]) < TOLERANCE
    assert _registered(client, run.info.run_id)
    first_after = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")
                      if m.step > resumed)
    recovery_s = first_after / 1000 - killed_at
    print(f"\ntraining: ranks on {[(p['rank'], p['node_ip'], p['node_id'][:12]) for p in before]}; node "
          f"{nodes[-1][:12]} removed {killed_at - started:.1f} s after the start; first step after it "
          f"{recovery_s:.1f} s later (resumed from step {resumed}, restarts {tags['restarts']}); ranks now on "
          f"{[(p['rank'], p['node_ip'], p['node_id'][:12]) for p in after]}", *_what_ray_said(output), sep="\n  ")
    assert recovery_s > 0


# ------------------------------------------------------------------ scoring on several nodes

def _what_ray_said(output: str, limit: int = 4) -> list[str]:
    """The job's log lines about the lost node (for the report, not asserted: Ray's wording changes)."""
    words = ("died", "dead", "restart", "retry", "retries", "unavailable", "lost", "failed")
    return [line.strip()[:200] for line in output.splitlines()
            if any(w in line.lower() for w in words) and "PlacementGroupCleaner" not in line][:limit]


def _scoring_input(fs, tiny_corpus: Path, prefix: str, files: int = 6, tag: str = "f") -> list[str]:
    rows = pa.concat_tables(pq.read_table(tiny_corpus / f"{s}.parquet").select(["id", "text"])
                            for s in ("train", "val", "test"))
    ids = []
    for k in range(files):
        part = rows.set_column(0, "id", pa.array([f"{tag}{k}-{i}" for i in rows.column("id").to_pylist()]))
        pq.write_table(part, f"{BUCKET}/{prefix}/part-{k}.parquet", filesystem=fs, row_group_size=32)
        ids += part.column("id").to_pylist()
    return ids


def _every_id_once(uri: str, expected: list[str]) -> dict:
    fs, base = filesystem_for(uri)
    files = Storage(fs).files(base)
    manifest = read_manifest(uri)
    assert manifest is not None
    assert set(files) == {f["path"] for f in manifest["files"]} | {MANIFEST}, "a file outside the manifest"
    ids = [i for p in files if p != MANIFEST for i in pq.read_table(f"{base}/{p}", filesystem=fs)
           .column("id").to_pylist()]
    assert sorted(ids) == sorted(expected)  # the whole directory read: every id exactly once
    assert manifest["rows_out"] + manifest["rows_rejected"] == manifest["rows_in"] == len(expected)
    return manifest


SCORING = ["max_length=32", "stages.min_blocks=6", "predictor.concurrency=2", "predictor.num_cpus=0.5",
           "predictor.rows_per_call=16", "predictor.tokenize_in_actor=true"]


def _score_losing_a_node(cluster, module: str, config: Path, overrides: list[str], env: dict, log: Path,
                         output_prefix: str) -> tuple[int, str]:
    """Run a scoring job, its predictor calls slowed; once its two actors are on two nodes and a part file is
    out, kill one actor's node (and add a replacement), and end the slowing. The job's exit status and log."""
    fs, _ = filesystem_for(f"s3://{BUCKET}")
    node_gone = log.with_suffix(".removed")
    env = {**env, PREDICT_DELAY_ENV: "0.5", DELAY_END_ENV: str(node_gone)}

    def written() -> list[str]:
        return [p for p in Storage(fs).files(f"{BUCKET}/{output_prefix}") if "part-" in p]

    process = _start(module, config, overrides, env, log)
    try:
        wait_for(lambda: len(_worker_nodes(cluster, "MapWorker")) == 2 or process.poll() is not None, 300,
              "two scoring actors")
        assert process.poll() is None, log.read_text()[-3000:]
        nodes = _worker_nodes(cluster, "MapWorker")
        wait_for(lambda: written() or process.poll() is not None, 300, "the first scored rows")
        files_out = len(written())
        cluster.remove(cluster.node(nodes[-1]))
        node_gone.touch()
        cluster.add_worker()
    finally:
        code, output = _finish(process, log)
    print(f"\n{module}: actors on {[n[:12] for n in nodes]}; {nodes[-1][:12]} removed with {files_out} part "
          f"file(s) written; exit {code}", *_what_ray_said(output), sep="\n  ")
    return code, output


def test_a_lost_node_during_batch_infer_scores_every_row_once(cluster, s3, tracking, session_dir, tiny_model_dir,
                                                               tiny_corpus):
    fs, _ = filesystem_for(f"s3://{BUCKET}")
    expected = _scoring_input(fs, tiny_corpus, "incoming")
    overrides = SCORING + [f"input.path=s3://{BUCKET}/incoming/", f"output_dir=s3://{BUCKET}/scores",
                           f"model={tiny_model_dir}", f"ray.shared_paths=[{tiny_model_dir.parent}]",
                           "run_name=nightly", "tracking.experiment=multi-node-scoring"]
    config = REPO / "configs/batch_infer.local-cpu.yaml"
    log = session_dir / "multi-node-scoring.log"
    env = _env(cluster, s3, tracking)
    code, output = _score_losing_a_node(cluster, "jobs.batch_infer", config, overrides, env, log, "scores/nightly")
    if code != 0:  # the run said it failed: its rerun of the same name finishes it, every row once
        assert "rerun with run_name=nightly" in output, output[-3000:]
        code, output = _finish(_start("jobs.batch_infer", config, overrides, env, log), log)
    assert code == 0, output[-4000:]
    _every_id_once(f"s3://{BUCKET}/scores/nightly", expected)


def test_a_lost_node_during_score_partitions_scores_every_partition_once(cluster, s3, tracking, session_dir,
                                                                         tiny_model_dir, tiny_corpus):
    from jobs.scoring.ledger import Store, committed_versions

    fs, _ = filesystem_for(f"s3://{BUCKET}")
    expected = {}
    for n in (1, 2, 3):
        expected[f"date={n}"] = _scoring_input(fs, tiny_corpus, f"daily/date={n}", files=2, tag=f"d{n}")
        with fs.open_output_stream(f"{BUCKET}/daily/date={n}/_SUCCESS") as marker:
            marker.write(b"")
    overrides = SCORING + [f"input.path=s3://{BUCKET}/daily", f"output_root=s3://{BUCKET}/scored",
                           f"model={tiny_model_dir}", f"ray.shared_paths=[{tiny_model_dir.parent}]",
                           "lease.heartbeat_s=0.5", "lease.ttl_s=60", "tracking.experiment=multi-node-partitions"]
    config = REPO / "configs/score_partitions.local-cpu.yaml"
    log = session_dir / "multi-node-partitions.log"
    env = _env(cluster, s3, tracking)
    code, output = _score_losing_a_node(cluster, "jobs.score_partitions", config, overrides, env, log, "scored")
    if code != 0:  # failed partitions are named, and the next scheduled run scores them
        assert "failed" in output, output[-3000:]
        code, output = _finish(_start("jobs.score_partitions", config, overrides, env, log), log)
    assert code == 0, output[-4000:]
    store = Store(f"s3://{BUCKET}/scored")
    for partition, ids in expected.items():
        versions = committed_versions(store, partition)
        assert len(versions) == 1, (partition, versions)  # scored once, not once per attempt
        _every_id_once(versions[0].uri, ids)


# ------------------------------------------------------------------ elastic training (scaling.min_workers)

SLOT = "train_slot"  # a custom resource: one per training node
ELASTIC_EPOCHS = 5


def _train_worker_ids(cluster) -> set[str]:
    return {a["ActorID"] for a in cluster.actors()
            if a.get("State") == "ALIVE" and str(a.get("ActorClassName", "")).startswith("RayTrainWorker")}


def test_elastic_training_goes_on_with_fewer_workers_and_grows_back(cluster, s3, tracking, session_dir,
                                                                    tiny_model_dir, tiny_reference, mlflow_uri):
    """With one of two training nodes lost and no room for a second worker, the run goes on with one
    (accumulating twice the micro-batches per step) and grows back to two when a training node returns;
    the schedule is kept. Training nodes declare one ``train_slot`` each and a worker reserves one, so a
    node holds one worker whatever its CPUs; the other nodes keep running the Ray Data stages."""
    slot = {SLOT: 1.0}
    for _ in range(2):
        cluster.add_worker(resources=slot)
    name, log = "elastic", session_dir / "multi-node-elastic.log"
    # 5 epochs, not the reference's 3: after the group of one's recorded checkpoint (epoch 1) it trains
    # on for ~45 s, which the added node must outrun (with 3 it had ~15 s, and once finished first)
    overrides = _training(name, tiny_model_dir, "run.max_failures=3", "scaling.min_workers=1",
                          f"scaling.custom_resources.{SLOT}=1", "scaling.resize_check_s=5",
                          f"optim.epochs={ELASTIC_EPOCHS}")
    started = time.time()
    # Ray Train waits this long for a group of two on its stale view before trying one (60 s by default);
    # a group here starts in ~8 s
    grown = session_dir / "elastic.grown"  # the slowed steps end once the group is two again
    env = _env(cluster, s3, tracking, **{STEP_DELAY_ENV: "1.0", DELAY_END_ENV: str(grown),
                                         "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30"})
    process = _start("jobs.finetune_classifier", TINY, overrides, env, log)
    try:
        wait_for(lambda: _recorded_checkpoint(name) or process.poll() is not None, 600, "the first checkpoint")
        assert process.poll() is None, log.read_text()[-3000:]
        first = _train_worker_ids(cluster)
        nodes = _worker_nodes(cluster, "RayTrainWorker")
        assert len(first) == 2 and len(nodes) == 2, (first, nodes)
        killed_at = cluster.remove(cluster.node(nodes[-1]))
        wait_for(lambda: (len(_train_worker_ids(cluster) - first) == 1) or process.poll() is not None, 300,
              "a new group of one worker")
        shrunk = _train_worker_ids(cluster) - first
        shrunk_at = time.time()
        before = _checkpoints(name)
        # the group of one goes on: Ray records a checkpoint of its own before capacity returns (one only
        # written to storage would be dropped by the resize, and the next group would resume from before)
        def recorded_since_the_kill() -> bool:
            latest = _latest_recorded_checkpoint(name)
            return latest is not None and latest not in before

        wait_for(lambda: recorded_since_the_kill() or process.poll() is not None, 300,
                 "a recorded checkpoint of the group of one")
        cluster.add_worker(resources=slot)
        added_at = time.time()
        wait_for(lambda: len(_train_worker_ids(cluster) - first - shrunk) == 2 or process.poll() is not None, 300,
              "a group of two again")
        grown_at = time.time()
        grown.touch()
    finally:
        code, output = _finish(process, log)
    assert code == 0, output[-4000:]
    client, run = _run_of(tracking, name)
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["restarts"] == "2", tags.get("restarts")
    assert tags["resumed_with_workers"] == "1,2"  # shrank to one, grew back to two
    # the global batch was kept: as many optimizer steps an epoch as the fixed two-worker run (3 epochs),
    # each logged once
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    reference = sorted(m.step for m in mlflow.MlflowClient(mlflow_uri).get_metric_history(tiny_reference.run_id,
                                                                                            "train_loss"))
    assert reference == list(range(reference[0], reference[0] + len(reference)))  # logged every step
    expected = list(range(reference[0], reference[0] + len(reference) // 3 * ELASTIC_EPOCHS))
    assert sorted(steps) == expected, (sorted(steps), expected)
    assert run.data.metrics["step"] == tiny_reference.metrics["step"] // 3 * ELASTIC_EPOCHS
    assert _registered(client, run.info.run_id)
    print(f"\nelastic: node removed at {killed_at - started:.1f} s; a group of one ran "
          f"{shrunk_at - killed_at:.1f} s after the kill; a node added, two workers again "
          f"{grown_at - added_at:.1f} s later; resumed from steps {tags['resumed_from_steps']} with "
          f"{tags['resumed_with_workers']} workers", *_what_ray_said(output), sep="\n  ")
