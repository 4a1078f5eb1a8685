"""The quiet console: each rule drops its exact third-party message and nothing else; verbose brings all back."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from jobs.common import config as config_lib
from jobs.common import console


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _unset(monkeypatch, name: str) -> None:
    """Unset for the test, and unset again after it even when the code under test sets it."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


@pytest.fixture
def quiet(monkeypatch):
    _unset(monkeypatch, console.VERBOSE_ENV)
    console.install_log_filters()
    yield
    console.remove_log_filters()


def _emit(logger_name: str, level: int, message: str) -> list[str]:
    logger = logging.getLogger(logger_name)
    keep, old_level = _Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        logger.log(level, message)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old_level)
    return keep.messages


@pytest.mark.parametrize("rule", console.LOG_RULES, ids=lambda r: r.message[:30])
def test_rule_drops_its_message_and_lets_the_same_loggers_errors_through(quiet, rule):
    noisy = rule.message + " and the rest of the library's sentence"
    assert _emit(rule.logger, logging.WARNING, noisy) == []
    assert _emit(rule.logger, logging.INFO, noisy) == []
    assert _emit(rule.logger, logging.ERROR, noisy) == [noisy]  # an error is never hidden
    assert _emit(rule.logger, logging.WARNING, "something else went wrong") == ["something else went wrong"]
    child = rule.logger + ".child"  # a filter on one logger is not one on a whole tree
    assert _emit(child, logging.WARNING, noisy) == [noisy]


@pytest.mark.parametrize("rule", console.LOG_RULES, ids=lambda r: r.message[:30])
def test_rule_names_a_logger_and_message_that_the_installed_library_has(rule):
    source = Path(importlib.util.find_spec(rule.logger).origin).read_text()
    assert "logging.getLogger(__name__)" in source
    assert rule.message in source


def test_verbose_environment_installs_nothing(monkeypatch):
    rule = console.LOG_RULES[0]
    noisy = rule.message + "."
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    console.install_log_filters()  # left over from an earlier quiet call in the same process
    console.install()
    console.install_worker()
    try:
        assert _emit(rule.logger, logging.WARNING, noisy) == [noisy]
    finally:
        console.remove_log_filters()


def test_verbose_flag_of_every_job_sets_the_environment_for_its_ray_workers(monkeypatch, tmp_path):
    from jobs.init_offline_model import InitOfflineModelConfig

    rule = console.LOG_RULES[0]
    _unset(monkeypatch, console.VERBOSE_ENV)  # parse_args sets it: put back after the test
    config_lib.parse_args(InitOfflineModelConfig, "test", [])
    try:
        assert _emit(rule.logger, logging.WARNING, rule.message) == []  # a job's CLI installs the filters
        _, args = config_lib.parse_args(InitOfflineModelConfig, "test", ["--verbose"])
        assert args.verbose
        assert os.environ[console.VERBOSE_ENV] == "1"
        assert _emit(rule.logger, logging.WARNING, rule.message) == [rule.message]
    finally:
        console.remove_log_filters()


PREEMPTION = ("[2026-11-27 05:29:49,871 E 28077 28109] core_worker.cc:2465: Actor with class name: "
              "'PreemptionWatcher' and ID: '31db12b7017cc251347aa45101000000' has constructor arguments in the "
              "object store and max_restarts > 0. If the arguments in the object store go out of scope or are "
              "lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more "
              "details.")
MAP_WORKER = PREEMPTION.replace("'PreemptionWatcher'", "'MapWorker(MapBatches(ClassifierPredictor))'")
OUR_ACTOR = PREEMPTION.replace("'PreemptionWatcher'", "'TokenizerActor'")
CORE_ERROR = "[2026-11-27 05:29:50,000 E 28077 28109] core_worker.cc:812: Failed to get the actor: lost"


def test_streamed_ray_internal_actor_lines_are_dropped_and_others_kept():
    batch = {"pid": 28077, "is_err": True, "lines": [PREEMPTION, "epoch 1", MAP_WORKER, OUR_ACTOR, CORE_ERROR]}
    console.drop_streamed_noise(batch)
    assert batch["lines"] == ["epoch 1", OUR_ACTOR, CORE_ERROR]


def test_pyfunc_predict_methods_carry_type_hints_so_mlflow_does_not_warn():
    # MLflow checks predict once per process, when the class is defined: a fresh interpreter sees it.
    code = "import jobs.common.registry, jobs.common.seq2seq_pyfunc"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "type hint" not in done.stderr.lower(), done.stderr


@pytest.fixture
def driver_state(monkeypatch):
    """quiet_ray_driver and install change process-wide state: put it back after the test."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    monkeypatch.setattr(dispatcher, "handlers", list(dispatcher.handlers))
    monkeypatch.delitem(sys.modules, "transformers", raising=False)


def test_off_a_terminal_progress_is_plain_periodic_lines(monkeypatch, quiet, driver_state):
    from ray.data import DataContext

    for name in ("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "HF_HUB_DISABLE_PROGRESS_BARS",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        _unset(monkeypatch, name)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    context = DataContext.get_current()
    monkeypatch.setattr(context, "use_ray_tqdm", True)
    console.install()
    console.quiet_ray_driver()
    assert os.environ["RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"] == str(console.PROGRESS_LOG_INTERVAL_S)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert context.use_ray_tqdm is False  # workers log progress lines instead of drawing bars on the driver


def test_on_a_terminal_progress_bars_stay(monkeypatch, quiet, driver_state):
    from ray.data import DataContext

    _unset(monkeypatch, "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    context = DataContext.get_current()
    monkeypatch.setattr(context, "use_ray_tqdm", True)
    console.install()
    console.quiet_ray_driver()
    assert "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL" not in os.environ
    assert context.use_ray_tqdm is True


def test_worker_hook_installs_the_filters_where_this_package_cannot_be_imported(tmp_path):
    # Ray runs the hook before the worker has the driver's directory on its path.
    import ray.cloudpickle

    payload = ray.cloudpickle.dumps(console.worker_setup_hook())
    rule = console.LOG_RULES[0]
    code = ("import logging, pickle, sys; pickle.loads(sys.stdin.buffer.read())(); "
            f"log = logging.getLogger({rule.logger!r}); "
            f"log.warning({rule.message!r}); log.error('MARK-ERROR'); print('jobs' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", console.VERBOSE_ENV)}
    done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, cwd=tmp_path, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "False"  # nothing of this package was imported there
    lines = done.stderr.decode().splitlines()  # Ray's own handler on the "ray" logger stamps the time
    assert len(lines) == 1 and lines[0].endswith("MARK-ERROR"), lines


def test_warning_rule_drops_rays_own_deprecation_and_keeps_others(quiet):
    from ray.util.annotations import RayDeprecationWarning

    noisy = ("`ExecutionOptions.exclude_resources` is deprecated and will be removed after January 2027. Use "
             "`ExecutionOptions.label_selector` to constrain Ray Data work to labeled nodes.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.install_log_filters()  # in front of "always", as in a job where it runs at start-up
        warnings.warn(noisy, RayDeprecationWarning)
        warnings.warn("`ExecutionOptions.other` is deprecated", RayDeprecationWarning)
        warnings.warn(noisy, UserWarning)  # the same words under another category are not the rule's
        console.remove_log_filters()
        warnings.warn(noisy, RayDeprecationWarning)  # verbose: back
    assert [(str(w.message)[:26], w.category) for w in caught] == [
        ("`ExecutionOptions.other` i", RayDeprecationWarning), (noisy[:26], UserWarning),
        (noisy[:26], RayDeprecationWarning)]
