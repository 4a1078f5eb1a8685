"""prepare_corpus publishes each folder whole (staging, manifest last, one rename); readers check the manifest.

The crash is real: the job runs in its own process and is killed (SIGKILL) between two splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.corpus_manifest import MANIFEST, CorpusManifestError, check_corpus_files
from data_pipeline.paths import resolve_parquet_files
from jobs.common.config import ConfigError
from jobs.common.labels import agreed_label_names
from jobs.corpus.prepare import PAUSE_AFTER_SPLIT_ENV, CorpusInput, PrepareCorpusConfig, Seq2SeqCorpusSettings, run

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


def _source(tmp_path: Path, name: str, labels: tuple[str, ...], rows_per_label: int = 12) -> Path:
    path = tmp_path / name
    lines = [f"{label}评论{i}号,{label}" for label in labels for i in range(rows_per_label)]
    path.write_text("text,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(source: Path, out: Path, **seq2seq) -> PrepareCorpusConfig:
    return PrepareCorpusConfig(input=CorpusInput(kind="file", path=str(source)), output_dir=str(out),
                               log_to_mlflow=False, seq2seq=Seq2SeqCorpusSettings(**seq2seq))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _files(folder: Path) -> dict:
    return {split: resolve_parquet_files(str(folder / f"{split}.parquet")) for split in SPLITS}


def test_a_publish_lists_every_file_with_rows_sizes_and_digests_and_names_the_pinyin_publish(tmp_path: Path):
    out = tmp_path / "data" / "corpus"
    run(_config(_source(tmp_path, "in.csv", ("neg", "pos")), out, enabled=True))
    manifest = json.loads((out / MANIFEST).read_text())
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert sorted(listed) == ["labels.json", "stats.json", "test.parquet", "train.parquet", "val.parquet"]
    for split in SPLITS:
        path = out / f"{split}.parquet"
        assert listed[path.name]["rows"] == pq.read_metadata(path).num_rows > 0
        assert listed[path.name]["bytes"] == path.stat().st_size
        assert listed[path.name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["label_names"] == ["neg", "pos"] and manifest["kind"] == "classification"
    pinyin = json.loads((tmp_path / "data" / "pinyin" / MANIFEST).read_text())  # the default data/pinyin
    assert manifest["pinyin"] == {"path": "../pinyin", "publish_id": manifest["publish_id"]}
    assert pinyin["publish_id"] == manifest["publish_id"] and pinyin["corpus"]["path"] == "../corpus"
    assert check_corpus_files(_files(out)) == {split: {manifest["publish_id"]} for split in SPLITS}
    assert not [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no staging left


def test_killed_between_two_splits_the_old_corpus_stays_whole_and_usable_then_a_rerun_publishes(tmp_path: Path):
    out = tmp_path / "corpus"
    run(_config(_source(tmp_path, "old.csv", ("neg", "pos")), out))
    before = _digests(out)
    new = _source(tmp_path, "new.csv", ("bad", "good", "okay"))
    command = [sys.executable, "-m", "jobs.prepare_corpus", "--set", "log_to_mlflow=false", "--set", "input.kind=file",
               "--set", f"input.path={new}", "--set", f"output_dir={out}"]
    job = subprocess.Popen(command, cwd=REPO, env={**os.environ, PAUSE_AFTER_SPLIT_ENV: "60"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        staged = []
        while not staged and time.monotonic() < deadline and job.poll() is None:
            staged = [p for p in tmp_path.glob(".corpus.staging-*/train.parquet") if p.stat().st_size]
            time.sleep(0.1)
        assert staged and job.poll() is None, job.stdout.read().decode() if job.poll() is not None else "no split"
        time.sleep(0.5)  # the train split is written and closed: the job sleeps before writing val
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert not (staged[0].parent / "val.parquet").exists()  # killed between two splits
    assert _digests(out) == before  # the old corpus, untouched
    assert check_corpus_files(_files(out)) and agreed_label_names(_files(out)) == ["neg", "pos"]  # and usable

    stats = run(_config(new, out))  # a rerun (the dead run's staging folder is a hidden sibling, ignored)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["label_names"] == ["bad", "good", "okay"] and sum(stats.rows_per_split.values()) == 36
    assert agreed_label_names(_files(out)) == ["bad", "good", "okay"] and check_corpus_files(_files(out))


def test_readers_refuse_a_corpus_folder_without_its_manifest(tmp_path: Path):
    from jobs.train.seq2seq import Seq2SeqData, Seq2SeqTrainConfig, prepare_data

    out = tmp_path / "data" / "corpus"
    run(_config(_source(tmp_path, "in.csv", ("neg", "pos")), out, enabled=True))
    (out / MANIFEST).unlink()  # as an earlier version (or a crash mid-way) left it: files written in place
    with pytest.raises(CorpusManifestError, match=r"corpus: looks like a prepare_corpus output \(it holds "
                                                  r"labels\.json and stats\.json\) but has no _CORPUS\.json.*run "
                                                  r"`python -m jobs\.prepare_corpus` again"):
        check_corpus_files(_files(out))
    pinyin = tmp_path / "data" / "pinyin"
    (pinyin / MANIFEST).unlink()
    data = Seq2SeqData(**{split: str(pinyin / f"{split}.parquet") for split in SPLITS})
    with pytest.raises(CorpusManifestError, match=r"pinyin: looks like a prepare_corpus output \(it holds stats"):
        prepare_data(Seq2SeqTrainConfig(data=data))


def test_splits_of_two_publishes_or_a_file_changed_after_the_publish_are_refused(tmp_path: Path):
    from jobs.train.classifier import ClassifierData, FinetuneConfig, prepare

    first, second = tmp_path / "first", tmp_path / "second"
    run(_config(_source(tmp_path, "a.csv", ("neg", "pos")), first))
    run(_config(_source(tmp_path, "b.csv", ("neg", "pos"), rows_per_label=20), second))
    mixed = FinetuneConfig(data=ClassifierData(train=str(first / "train.parquet"), val=str(second / "val.parquet"),
                                               test=str(first / "test.parquet")))
    with pytest.raises(CorpusManifestError, match=r"two prepare_corpus publishes: val .*second/val\.parquet "
                                                  r"\(publish .*\), train .*first/train\.parquet"):
        prepare(mixed, None)
    shutil.copy(second / "val.parquet", first / "val.parquet")  # copied in by hand: another size
    with pytest.raises(CorpusManifestError, match=r"first/val\.parquet: \d+ bytes, but .*first/_CORPUS\.json lists"):
        check_corpus_files(_files(first))


def test_evaluate_refuses_a_file_of_a_corpus_folder_without_its_manifest(tmp_path: Path):
    from jobs.evaluation.inputs import EvaluationInput
    from jobs.evaluation.runner import EvaluateConfig, read_rows

    out = tmp_path / "corpus"
    run(_config(_source(tmp_path, "in.csv", ("neg", "pos")), out))
    (out / MANIFEST).unlink()
    with pytest.raises(CorpusManifestError, match="no _CORPUS.json"):
        read_rows(EvaluateConfig(input=EvaluationInput(path=str(out / "test.parquet"))), model=None)


def test_user_parquet_outside_a_corpus_folder_is_read_as_it_is(tmp_path: Path):
    out = tmp_path / "corpus"
    run(_config(_source(tmp_path, "in.csv", ("neg", "pos")), out))
    mine = tmp_path / "mine"
    mine.mkdir()
    for split in SPLITS:  # a user's folder of splits: no labels.json, no stats.json, no manifest
        shutil.copy(out / f"{split}.parquet", mine / f"{split}.parquet")
    assert check_corpus_files(_files(mine)) == {split: set() for split in SPLITS}


def test_a_folder_holding_files_prepare_corpus_does_not_write_is_refused_before_any_work(tmp_path: Path):
    out = tmp_path / "exports"
    out.mkdir()
    source = _source(out, "in.csv", ("neg", "pos"))  # the user's own file, where the output would go
    with pytest.raises(ConfigError, match=r"exports holds in\.csv, which this job does not write"):
        run(_config(source, out))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["exports", "in.csv"]
    with pytest.raises(ConfigError, match="must be separate folders"):
        run(_config(source, tmp_path / "corpus", enabled=True, output_dir=str(tmp_path / "corpus" / "pinyin")))


def test_an_mlflow_outage_after_the_publish_only_warns(tmp_path: Path, capsys):
    from jobs.common.tracking import TrackingConfig

    config = _config(_source(tmp_path, "in.csv", ("neg", "pos")), tmp_path / "corpus")
    config = dataclasses.replace(config, log_to_mlflow=True, tracking=TrackingConfig(
        tracking_uri="http://127.0.0.1:9", check_timeout_s=2.0))  # nothing listens on the discard port
    run(config)
    manifest = json.loads((tmp_path / "corpus" / MANIFEST).read_text())
    assert check_corpus_files(_files(tmp_path / "corpus"))
    err = capsys.readouterr().err
    assert f"WARNING: corpus published (publish {manifest['publish_id']}), but recording it in MLflow failed" in err


def test_a_users_csv_beside_their_own_stats_json_is_not_taken_for_a_corpus(tmp_path: Path):
    from data_pipeline.corpus_manifest import check_corpus_file
    from data_pipeline.paths import filesystem_for

    source = _source(tmp_path, "eval.csv", ("neg", "pos"))
    (tmp_path / "stats.json").write_text("{}")  # the user's own, unrelated
    assert check_corpus_file(*filesystem_for(str(source)), str(source)) is None
