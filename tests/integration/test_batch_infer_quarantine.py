"""batch_infer on a real local Ray quarantines unscorable rows in one pass and names corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.quarantine import EMPTY_TEXT, NULL_TEXT, UNDECODABLE_TEXT

from bad_parquet import write_bad_rows


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory, tiny_corpus: Path) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("quarantine-input")
    good = pq.read_table(tiny_corpus / "val.parquet").select(["id", "text"]).slice(0, 20)
    pq.write_table(good, folder / "good.parquet")
    expected = {i: None for i in good.column("id").to_pylist()}
    expected.update(write_bad_rows(folder / "bad.parquet"))
    return folder, expected


def test_batch_infer_quarantines_bad_rows_in_one_pass(ray_local, mlflow_uri, tiny_model_dir: Path, mixed_input,
                                                      tmp_path: Path):
    from jobs.scoring.batch import BatchInferConfig, BatchInput, run
    from data_pipeline.ray_stages import StageResources
    from jobs.scoring.predictors import PredictorSettings
    from jobs.common.tracking import TrackingConfig

    folder, expected = mixed_input
    # The default layout (a tokenizer actor feeding the predictor actors), with one predictor to save a start-up.
    outcome = run(BatchInferConfig(input=BatchInput(path=str(folder)), output_dir=str(tmp_path / "scores"),
                                   model=str(tiny_model_dir), max_length=32, stages=StageResources(min_blocks=2),
                                   predictor=PredictorSettings(concurrency=1, rows_per_call=16),
                                   tracking=TrackingConfig(experiment="test-quarantine")))
    scored = pq.read_table(outcome.output_path)  # pyarrow skips _rejected/ and _SUCCESS, as readers should
    rejected = pq.read_table(outcome.rejected_path)
    good_ids = sorted(k for k, v in expected.items() if v is None)
    assert sorted(scored.column("id").to_pylist()) == good_ids
    assert dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist())) == \
        {k: v for k, v in expected.items() if v is not None}
    assert set(rejected.column("source_file").to_pylist()) == {str(folder / "bad.parquet")}
    truncated = dict(zip(scored.column("id").to_pylist(), scored.column("truncated").to_pylist()))
    assert truncated["b-long"] is True and truncated["b-ok"] is False
    assert outcome.rows_in == len(expected) == outcome.rows_out + outcome.rows_rejected
    assert outcome.rows_rejected == 4 and outcome.rejected_by_reason == {EMPTY_TEXT: 2, NULL_TEXT: 1,
                                                                         UNDECODABLE_TEXT: 1}
    manifest = json.loads((Path(outcome.output_path) / "_SUCCESS").read_text())
    assert manifest["rows_in"] == len(expected) and sum(f["rows"] for f in manifest["files"]) == len(expected)
    metrics = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id).data.metrics
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (len(expected), len(good_ids), 4)
    assert metrics["rows_rejected_empty_text"] == 2 and metrics["rows_per_s"] > 0


def test_batch_infer_fails_naming_a_corrupt_file(mlflow_uri, tiny_model_dir: Path, tmp_path: Path, capsys):
    from jobs.batch_infer import main

    pq.write_table(pa.table({"id": ["a"], "text": ["好"]}), tmp_path / "fine.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    code = main(["--set", f"input.path={tmp_path}", "--set", f"output_dir={tmp_path / 'out'}",
                 "--set", f"model={tiny_model_dir}"])
    assert code == 65  # the data is at fault (jobs/common/cli.py)
    assert f"{tmp_path / 'broken.parquet'}: unreadable as Parquet" in capsys.readouterr().err


def test_batch_infer_quarantines_unreadable_files_when_asked(ray_local, mlflow_uri, tiny_model_dir: Path,
                                                             tiny_corpus: Path, tmp_path: Path):
    """``read.on_unreadable_file: quarantine``: the good files are scored, the bad ones listed with their reason
    and the rows they held; the counts still add up (out + rejected + unreadable = in)."""
    from bad_parquet import corrupt_data_page
    from jobs.scoring.batch import BatchInferConfig, run
    from jobs.common.config import load

    folder = tmp_path / "input"
    folder.mkdir()
    good = pa.concat_tables(pq.read_table(tiny_corpus / f"{split}.parquet").select(["id", "text"])
                            for split in ("val", "test"))
    assert good.num_rows >= 16
    pq.write_table(good.slice(0, 10), folder / "a-good.parquet")
    pq.write_table(good.slice(10, 6), folder / "b-page.parquet")
    corrupt_data_page(folder / "b-page.parquet")  # its footer reads: found only when its data is read
    (folder / "c-broken.parquet").write_bytes(b"PAR1" + b"\x00" * 64)  # not even a footer
    overrides = [f"input.path={folder}", f"output_dir={tmp_path / 'out'}", f"model={tiny_model_dir}", "max_length=32",
                 "stages.min_blocks=1", "predictor.concurrency=1", "predictor.tokenize_in_actor=true",
                 "read.on_unreadable_file=quarantine", "tracking.experiment=test-quarantine-files"]
    outcome = run(load(BatchInferConfig, None, overrides))

    manifest = json.loads((Path(outcome.output_path) / "_SUCCESS").read_text())
    unreadable = {Path(u["file"]).name: u for u in manifest["unreadable_files"]}
    assert set(unreadable) == {"b-page.parquet", "c-broken.parquet"}
    assert unreadable["c-broken.parquet"]["rows"] is None and "unreadable as Parquet" in \
        unreadable["c-broken.parquet"]["reason"]
    assert unreadable["b-page.parquet"]["rows"] == 6
    scored = pq.read_table(outcome.output_path)
    assert sorted(scored.column("id").to_pylist()) == sorted(good.slice(0, 10).column("id").to_pylist())
    assert manifest["rows_in"] == 16 and manifest["rows_unreadable"] == 6
    assert manifest["rows_out"] + manifest["rows_rejected"] + manifest["rows_unreadable"] == manifest["rows_in"]
    metrics = mlflow.MlflowClient(mlflow_uri).get_run(outcome.run_id).data.metrics
    assert (metrics["files_unreadable"], metrics["rows_unreadable"]) == (2, 6)
