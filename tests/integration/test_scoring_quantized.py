"""The int8 predictor through the real scoring job (local Ray), and the compiled predictor (slow: inductor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from jobs.common.registry import ResolvedModel
from jobs.scoring.predictors import PredictorSettings, TokenizingClassifierPredictor
from jobs.scoring.sink import read_manifest


def score_in_process(model_dir: Path, texts: list[str], **settings) -> tuple[dict, torch.nn.Module]:
    resolved = ResolvedModel(load_uri=str(model_dir), name="m", version="local", run_id="")
    predictor = TokenizingClassifierPredictor(resolved, None, PredictorSettings(**settings), str(model_dir),
                                              max_length=32, keep_columns=("id",))
    return predictor(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})), predictor.model


def test_batch_infer_scores_with_the_int8_predictor(ray_local, mlflow_uri, tiny_model_dir: Path, tiny_corpus: Path,
                                                    tmp_path: Path):
    import mlflow

    from jobs.scoring.batch import BatchInferConfig, BatchInput, run
    from jobs.common.tracking import TrackingConfig

    texts = pq.read_table(tiny_corpus / "test.parquet").column("text").to_pylist()
    outcome = run(BatchInferConfig(input=BatchInput(path=str(tiny_corpus / "test.parquet")),
                                   output_dir=str(tmp_path / "scores"), model=str(tiny_model_dir), max_length=32,
                                   predictor=PredictorSettings(concurrency=1, rows_per_call=64,
                                                               quantize="dynamic_int8"),
                                   tracking=TrackingConfig(experiment="test-int8")))
    scored = pq.read_table(outcome.output_path).to_pydict()
    assert outcome.rows_out == len(texts) == len(scored["id"])
    ids = pq.read_table(tiny_corpus / "test.parquet").column("id").to_pylist()
    job = dict(zip(scored["id"], scored["probability"]))
    fp32, _ = score_in_process(tiny_model_dir, texts)
    int8, _ = score_in_process(tiny_model_dir, texts, quantize="dynamic_int8")
    job_probs = np.array([job[i] for i in ids])
    # A random model: every probability near 0.5, so compare probabilities, not labels. The job's
    # actors ran the int8 model: its scores sit near the in-process int8 ones (activation scales
    # depend on the pass's rows, which differ between the two), further from fp32's exact ones.
    assert np.abs(job_probs - fp32["probability"]).max() < 0.05
    assert np.abs(job_probs - fp32["probability"]).max() > 1e-5
    assert np.abs(job_probs - int8["probability"]).max() < np.abs(job_probs - fp32["probability"]).max()
    params = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id).data.params
    assert params["predictor.quantize"] == "dynamic_int8"
    assert read_manifest(outcome.output_path)["scored_with"]["quantize"] == "dynamic_int8"  # beside the scores


def test_the_compiled_predictor_gives_the_eager_predictions(tiny_model_dir: Path, tiny_corpus: Path):
    texts = pq.read_table(tiny_corpus / "test.parquet").column("text").to_pylist() * 3
    eager, _ = score_in_process(tiny_model_dir, texts, forward_batch_size=8)
    compiled, model = score_in_process(tiny_model_dir, texts, forward_batch_size=8, compile=True)
    assert hasattr(model, "_orig_mod")  # torch.compile's wrapper: the compiled path ran
    assert compiled["label"].tolist() == eager["label"].tolist()
    np.testing.assert_allclose(compiled["probability"], eager["probability"], atol=1e-5)
