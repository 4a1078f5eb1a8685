"""End-to-end: the seq2seq job on a real local Ray (2 DDP workers) and a real MLflow store, tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from jobs.common import config as config_lib
from jobs.train.seq2seq import Seq2SeqTrainConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair_files(tiny_corpus: Path):
    """The pinyin pairs prepare_corpus wrote beside the session's tiny review corpus (120 reviews)."""
    out = tiny_corpus.parent / "pinyin"
    rows = {split: pq.read_metadata(out / f"{split}.parquet").num_rows for split in ("train", "val", "test")}
    return out, rows


def test_tiny_run_logs_metrics_and_registers_a_model_that_transliterates(ray_local, mlflow_uri, pair_files,
                                                                                 tmp_path):
    import mlflow

    from jobs.train.seq2seq import report, run

    data_dir, rows = pair_files
    config = config_lib.load(Seq2SeqTrainConfig, ROOT / "configs/train_seq2seq.tiny.yaml", [
        f"data.train={data_dir / 'train.parquet'}", f"data.val={data_dir / 'val.parquet'}",
        f"data.test={data_dir / 'test.parquet'}", f"run.storage_path={tmp_path / 'ray'}",
        "run.audit_shards=true", f"tracking.tracking_uri={mlflow_uri}"])
    outcome = run(config)
    report(outcome, config)

    # Metrics: per-epoch validation, final test incl. polyphonic characters, the baseline beside them.
    logged = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id).data.metrics
    for key in ("train_loss", "train_tokens_per_s", "val_loss", "val_token_accuracy", "val_syllable_accuracy",
                "val_exact_match", "test_loss", "test_syllable_accuracy", "test_polyphonic_accuracy",
                "test_exact_match", "baseline_char_test_syllable_accuracy",
                "baseline_char_test_polyphonic_accuracy"):
        assert key in logged, key
    assert logged["test_decoded_rows"] == rows["test"]  # every test row decoded once, across both workers
    assert 0.0 <= logged["test_syllable_accuracy"] <= 1.0

    # DDP: both workers took the same number of steps and together saw every train row exactly once.
    audit = tmp_path / "ray" / outcome.run_name / "audit"
    finals = [json.loads((audit / f"final-rank{r}.json").read_text()) for r in (0, 1)]
    assert finals[0]["step"] == finals[1]["step"] > 0
    assert finals[0]["parameter_digest"] == finals[1]["parameter_digest"]
    seen = [json.loads((audit / f"epoch0-rank{r}.json").read_text())["ids"] for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) >= rows["train"] - 1  # the equal split may drop world-1 rows

    # The export beside the checkpoint: safetensors + config + both tokenizers.
    assert {p.name for p in Path(outcome.model_dir).iterdir()} >= {
        "model.safetensors", "seq2seq_config.json", "source_tokenizer.json", "target_tokenizer.json"}

    # The registered pyfunc turns Chinese texts into strings of target tokens.
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model(outcome.model_uri)
    import pandas as pd

    predicted = model.predict(pd.DataFrame({"source": ["房间很大", "还行"]}))
    assert list(predicted.columns) == ["target"] and len(predicted) == 2
    assert all(isinstance(t, str) for t in predicted["target"])
    beam = model.predict(pd.DataFrame({"source": ["房间很大"]}), params={"beam_size": 2})
    assert isinstance(beam["target"][0], str)

    # The batch scoring job takes the registered seq2seq model: every row decoded once, as the pyfunc
    # decodes it, with lineage; a row with no text is rejected, not lost.
    _batch_generation_matches_the_pyfunc(outcome.model_uri, model, data_dir / "test.parquet", mlflow_uri, tmp_path)

    # The evaluation job measures the registered model on the test split through the scoring pipeline:
    # the same greedy decoding, so the same syllable accuracy as the training job's own test pass.
    _evaluation_matches_the_training_run(outcome, data_dir, mlflow_uri, tmp_path)


def _evaluation_matches_the_training_run(outcome, data_dir: Path, mlflow_uri: str, tmp_path: Path) -> None:
    from jobs.evaluation.runner import EvaluateConfig
    from jobs.evaluation.runner import run as evaluate

    config = config_lib.load(EvaluateConfig, ROOT / "configs/evaluate.local-cpu.yaml", [
        f"model={outcome.model_uri}", f"input.path={data_dir / 'test.parquet'}",
        f"input.train_path={data_dir / 'train.parquet'}",
        f"output_dir={tmp_path / 'evaluations'}", f"tracking.tracking_uri={mlflow_uri}", "predictor.concurrency=1"])
    result = evaluate(config)
    trained = outcome.metrics
    assert result.counts.rows_out == int(trained["test_decoded_rows"])
    for key in ("syllable_accuracy", "polyphonic_accuracy"):
        assert result.metrics[key] == pytest.approx(trained[f"test_{key}"]), key
        assert result.metrics[f"baseline_char_eval_{key}"] == pytest.approx(trained[f"baseline_char_test_{key}"]), key


def _batch_generation_matches_the_pyfunc(model_uri, pyfunc_model, test_file: Path, mlflow_uri: str,
                                         tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow as pa

    from jobs.scoring.batch import BatchInferConfig
    from jobs.scoring.batch import run as score
    from jobs.scoring.sink import committed_files

    pairs = pq.read_table(test_file).select(["id", "source"])
    bad = pa.table({"id": ["empty-1"], "source": ["   "]}, schema=pairs.schema)
    pq.write_table(pa.concat_tables([pairs, bad]), tmp_path / "to-score.parquet")
    config = config_lib.load(BatchInferConfig, ROOT / "configs/batch_infer.local-cpu.yaml", [
        f"input.path={tmp_path / 'to-score.parquet'}", f"output_dir={tmp_path / 'scores'}", f"model={model_uri}",
        "input.fields.text_columns=[source]", f"tracking.tracking_uri={mlflow_uri}", "predictor.concurrency=1"])
    outcome = score(config)
    assert (outcome.rows_in, outcome.rows_out, outcome.rows_rejected) == (pairs.num_rows + 1, pairs.num_rows, 1)
    scored = pq.read_table(committed_files(outcome.output_path)).to_pandas().set_index("id")
    assert sorted(scored.index) == sorted(pairs.column("id").to_pylist())
    assert set(scored["model_version"]) == {outcome.model_version}
    expected = pyfunc_model.predict(pd.DataFrame({"source": pairs.column("source").to_pylist()}))["target"]
    assert scored.loc[pairs.column("id").to_pylist(), "generated"].tolist() == expected.tolist()
    rejected = pq.read_table(committed_files(outcome.output_path, "rejected")).to_pylist()
    assert [(r["id"], r["reason"]) for r in rejected] == [("empty-1", "empty_text")]
