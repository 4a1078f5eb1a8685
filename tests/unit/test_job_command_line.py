"""Every job's command line (jobs.common.config.parse_args): the ``--set`` example of its ``--help`` sets a key
the job has, and ``--print-config`` prints the resolved config as YAML, secrets masked, and exits 0 having
done nothing (no Ray, no files)."""

from __future__ import annotations

import importlib
import re

import pytest
import yaml

from jobs.common.config import example_override, load
from tools.config_reference import job_configs

JOBS = job_configs()


def _main(job: str):
    return importlib.import_module(f"jobs.{job}").main


def _exit_code(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("--print-config started Ray")

    connected = ray.is_initialized()  # the suite's session Ray may be up already: only a change counts
    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert ray.is_initialized() == connected


@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_help_shows_a_set_example_the_job_takes(job, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps the help at the terminal's width
    assert _exit_code(_main(job), ["--help"]) == 0
    example = re.search(r"e\.g\. --set (\S+)", capsys.readouterr().out).group(1)
    cls = JOBS[job]
    assert load(cls, None, [example]) != cls(), f"{job}'s --help example --set {example} changes nothing"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_print_config_prints_what_the_command_line_resolves_to_and_does_nothing(job, tmp_path, monkeypatch, capsys,
                                                                                no_ray):
    monkeypatch.chdir(tmp_path)  # a job that ran would write its default relative paths here
    example = example_override(JOBS[job])
    assert _exit_code(_main(job), ["--print-config", "--set", example]) == 0
    assert list(tmp_path.iterdir()) == []
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out, encoding="utf-8")
    assert load(JOBS[job], printed) == load(JOBS[job], None, [example])  # what --config reads back


def test_print_config_shows_overrides_in_order_and_masks_secrets(capsys, no_ray):
    from jobs.finetune_classifier import main

    argv = ["--print-config", "--set", "optim.lr=5e-5", "--set", "optim.epochs=2", "--set", "optim.epochs=4",
            "--set", "tracking.tracking_uri=http://bob:hunter2@mlflow:5000",
            "--set", "data.train=https://store/train.parquet?X-Amz-Signature=s3cr3t", "--resume-from", "1e5"]
    assert _exit_code(main, argv) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["optim"]["lr"] == 5e-5 and printed["optim"]["epochs"] == 4  # the last --set wins
    assert printed["tracking"]["tracking_uri"] == "http://bob:***@mlflow:5000"
    assert printed["data"]["train"] == "https://store/train.parquet?X-Amz-Signature=***"
    assert "hunter2" not in out and "s3cr3t" not in out
    assert printed["model"]["warm_start"] == "1e5"  # --resume-from is model.warm_start, a run id never a number


def test_print_config_still_refuses_a_wrong_setting(capsys, no_ray):
    from jobs.finetune_classifier import main

    assert _exit_code(main, ["--print-config", "--set", "optim.lr=fast"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "optim.lr: expected a number" in captured.err
