"""Every job ends the same way (jobs/common/cli.py): bad input is one line and exit 65, a bad setting exit 2,
a bug its traceback and exit 1. The jobs run for real on small bad files; MLflow is a sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.corpus import write_split
from jobs.common import cli
from jobs.common.config import ConfigError

NEG_POS, POS_NEG = ("negative", "positive"), ("positive", "negative")


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """``--set`` pointing a job at one sqlite store for the module (created once, by the first job)."""
    return f"tracking.tracking_uri=sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _one_line_failure(capsys, job: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert f"{job} failed: " in err and "Traceback" not in err, err
    assert "the input is at fault: fix the file named above" in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("case, needle", [
    ("gbk_read_as_utf8", "not valid utf-8 text at line 2"),
    ("float_labels", "holds double values"),
    ("huge_integer_labels", "labels up to 123456789012"),
    ("null_ids", "1 row(s) have no id"),
    ("test_label_absent_from_train", "labels outside ['neg', 'pos']: ['neutral']"),
])
def test_prepare_corpus_input_errors_are_one_line_and_exit_65(tmp_path: Path, capsys, case, needle):
    from jobs.prepare_corpus import main

    settings = ["--set", "log_to_mlflow=false", "--set", f"output_dir={tmp_path / 'corpus'}",
                "--set", "input.kind=file"]
    if case == "test_label_absent_from_train":
        train = _csv(tmp_path / "train.csv", "text,label\n好,pos\n差,neg\n")
        test = _csv(tmp_path / "test.csv", "text,label\n一般,neutral\n")
        settings += ["--set", f"input.splits.train={train}", "--set", f"input.splits.val={train}",
                     "--set", f"input.splits.test={test}"]
        bad = test
    else:
        bad = {"gbk_read_as_utf8": lambda: _csv(tmp_path / "in.csv", "text,label\n质量很好,pos\n", "gbk"),
               "float_labels": lambda: _csv(tmp_path / "in.csv", "text,label\n好,1.0\n差,0.0\n"),
               "huge_integer_labels": lambda: _csv(tmp_path / "in.csv", "text,label\n好,123456789012\n差,0\n"),
               "null_ids": lambda: _csv(tmp_path / "in.csv", "id,text,label\na,好,pos\n,差,neg\n")}[case]()
        settings += ["--set", f"input.path={bad}"] + (["--set", "input.id_column=id"] if case == "null_ids" else [])
    assert main(settings) == cli.EXIT_DATAERR
    _one_line_failure(capsys, "corpus preparation", f"{bad}: ", needle)
    assert not (tmp_path / "corpus").exists()


def test_verbose_adds_the_traceback_and_keeps_the_status(tmp_path: Path, capsys, monkeypatch):
    from jobs.common.console import VERBOSE_ENV
    from jobs.prepare_corpus import main

    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored after the test: --verbose sets it for the process
    bad = _csv(tmp_path / "in.csv", "text,label\n好,1.5\n")
    assert main(["--verbose", "--set", "log_to_mlflow=false", "--set", "input.kind=file",
                 "--set", f"input.path={bad}", "--set", f"output_dir={tmp_path / 'out'}"]) == 65
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "InputFormatError" in err
    assert "corpus preparation failed: " in err


def test_a_bad_setting_exits_2_naming_it(tmp_path: Path, capsys):
    from jobs.prepare_corpus import main

    with pytest.raises(SystemExit) as info:  # argparse's own exit, as for any bad command line
        main(["--set", "split.limit_per_label=[1"])
    assert info.value.code == 2 and "--set split.limit_per_label=[1: `[` starts a YAML list" in capsys.readouterr().err


def test_finetune_with_splits_whose_labels_disagree_is_one_line_and_exit_65(tmp_path: Path, capsys, tracking):
    from jobs.finetune_classifier import main

    paths = {}
    for split, names in (("train", NEG_POS), ("val", POS_NEG), ("test", NEG_POS)):
        paths[split] = tmp_path / f"{split}.parquet"
        write_split(paths[split], ["a", "b"], ["好", "差"], [0, 1], [0, 1], names)
    code = main(["--set", tracking, *[a for split, path in paths.items() for a in ("--set", f"data.{split}={path}")]])
    assert code == 65
    _one_line_failure(capsys, "fine-tuning", f"{paths['val']} (val split) has ['positive', 'negative']")


def test_train_seq2seq_with_a_missing_split_is_one_line_and_exit_65(tmp_path: Path, capsys, tracking):
    from jobs.train_seq2seq import main

    assert main(["--set", tracking, "--set", f"data.train={tmp_path / 'nope.parquet'}"]) == 65
    _one_line_failure(capsys, "seq2seq training", f"{tmp_path / 'nope.parquet'}: no such file or directory")


def test_batch_infer_with_a_model_whose_labels_are_in_another_order_is_refused(tmp_path: Path, capsys, tracking):
    from jobs.batch_infer import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"id2label": {"0": "positive", "1": "negative"}}))
    data = tmp_path / "test.parquet"
    write_split(data, ["a", "b"], ["好", "差"], [0, 1], [0, 1], NEG_POS)
    code = main(["--set", f"input.path={data}", "--set", f"model={model}", "--set", f"output_dir={tmp_path / 'scores'}",
                 "--set", tracking])
    assert code == 65
    _one_line_failure(capsys, "batch scoring", "names its classes ['positive', 'negative']",
                      "names them ['negative', 'positive']")
    assert not list((tmp_path / "scores").glob("**/*.parquet"))


def test_init_offline_model_without_its_labels_file_is_one_line_and_exit_65(tmp_path: Path, capsys):
    from jobs.init_offline_model import main

    assert main(["--set", f"labels_file={tmp_path / 'labels.json'}", "--set", f"output_dir={tmp_path / 'm'}"]) == 65
    _one_line_failure(capsys, "offline model creation", str(tmp_path / "labels.json"))


def test_known_failures_are_one_line_exit_1_and_bugs_keep_their_traceback(capsys):
    class Refused(RuntimeError):
        pass

    def raising(exc: BaseException):
        @cli.entry_point("demo", known=(Refused,))
        def main() -> int:
            raise exc
        return main

    assert raising(Refused("the target holds output"))() == 1
    assert "demo failed: the target holds output" in capsys.readouterr().err
    assert raising(ConfigError("max_length: 600 exceeds the model's positions"))() == 2
    assert "demo failed: max_length: 600" in capsys.readouterr().err
    for bug in (KeyError("id2label"), ValueError("math domain error"), TypeError("NoneType")):
        with pytest.raises(type(bug)):  # not swallowed: Python prints the traceback and exits 1
            raising(bug)()


def test_training_done_but_tracking_left_for_later_exits_75_naming_the_command(capsys):
    from jobs.finetune_classifier import main as finetune_main
    from jobs.train.run_tracking import TrackingIncomplete

    @cli.entry_point("fine-tuning", later=(TrackingIncomplete,))
    def main() -> int:
        raise TrackingIncomplete("checkpoint s3://b/ray/run/epoch-0001 is complete; run: python -m "
                                 "jobs.register_checkpoint --checkpoint s3://b/ray/run/epoch-0001")

    assert main() == cli.EXIT_TEMPFAIL == 75
    assert "python -m jobs.register_checkpoint --checkpoint" in capsys.readouterr().err
    # and the training jobs are wired so
    assert getattr(finetune_main, "__wrapped__", None) is not None
