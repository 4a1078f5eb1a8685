"""The seq2seq job on GPUs (tiny config, bf16, one worker per GPU) and its decoder on CUDA against the CPU.

Skipped where CUDA is absent; the dry run (GPU_TESTS_ON_CPU=1) trains on 2 CPU workers over gloo.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

from gpu_jobs import CUDA_ONLY, REPO, assert_trained_on  # noqa: E402

# Greedy and beam decoding pick argmaxes: float32 on CUDA (other kernels, other summation order) may break
# a near-tie the other way, so a few rows may differ; where the tokens agree, their log-probabilities agree
# to this tolerance.
MIN_SAME_ROWS = 0.95
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def seq2seq_gpu(ray_gpu, target, mlflow_uri, tiny_corpus: Path, session_dir: Path):
    from jobs.common import config as config_lib
    from jobs.train.seq2seq import Seq2SeqTrainConfig, run

    pairs = tiny_corpus.parent / "pinyin"  # prepare_corpus writes the pinyin pairs beside the reviews
    config = config_lib.load(Seq2SeqTrainConfig, REPO / "configs/train_seq2seq.tiny.yaml", [
        f"data.train={pairs / 'train.parquet'}", f"data.val={pairs / 'val.parquet'}",
        f"data.test={pairs / 'test.parquet'}", f"run.storage_path={session_dir / 'gpu-seq2seq'}",
        *target.scaling, "optim.epochs=3", "tracking.registered_model=zh-pinyin-gpu-tiny"])
    return config, run(config), pairs


def test_seq2seq_job_trains_on_gpu_logs_and_registers(seq2seq_gpu, target, mlflow_uri):
    import mlflow
    import pyarrow.parquet as pq

    config, outcome, pairs = seq2seq_gpu
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert_trained_on(run, target)
    logged = run.data.metrics
    for key in ("train_loss", "train_tokens_per_s", "val_loss", "val_syllable_accuracy", "test_loss",
                "test_syllable_accuracy", "test_exact_match"):
        assert key in logged and math.isfinite(logged[key]), key
    assert logged["test_decoded_rows"] == pq.read_metadata(pairs / "test.parquet").num_rows
    assert client.get_model_version_by_alias("zh-pinyin-gpu-tiny", "candidate").run_id == outcome.run_id


def test_decoding_on_cuda_gives_the_cpu_tokens(seq2seq_gpu, target):
    import pyarrow.parquet as pq
    import torch

    if target.device != "cuda":
        pytest.skip(CUDA_ONLY)

    from model.decoding import greedy_decode, sequence_scores
    from model.seq2seq_io import encode_source_ids, generate_tokens, load_seq2seq

    _, outcome, pairs = seq2seq_gpu
    sources = pq.read_table(pairs / "test.parquet", columns=["source"]).column("source").to_pylist()
    cpu, gpu = load_seq2seq(outcome.model_dir, "cpu"), load_seq2seq(outcome.model_dir, "cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    for beam_size in (1, 3):
        on_cpu = generate_tokens(cpu, sources, beam_size=beam_size)
        on_gpu = generate_tokens(gpu, sources, beam_size=beam_size)
        same = sum(a == b for a, b in zip(on_cpu, on_gpu))
        assert same >= MIN_SAME_ROWS * len(sources), f"beam {beam_size}: {same} of {len(sources)} rows agree"

    # The model scores the CPU's greedy output alike on both devices.
    encoded = encode_source_ids(cpu, sources[:16])
    width = max(len(ids) for ids in encoded)
    src = torch.tensor([ids + [cpu.config.pad_id] * (width - len(ids)) for ids in encoded])
    with torch.inference_mode():
        generated = greedy_decode(cpu.model, src, max_len=cpu.config.max_len)
        on_cpu = sequence_scores(cpu.model, src, generated)
        on_gpu = sequence_scores(gpu.model, src.cuda(), generated.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=LOGPROB_TOLERANCE)
