"""A readable console: known third-party noise is stopped where it is emitted, nothing else is hidden.

Each rule names the exact logger and the start of the exact message; records above WARNING always pass,
so an error from the same logger still shows. ``--verbose`` or TEXT_JOBS_VERBOSE=1 installs none of it.
Kept free of heavy imports: every Ray worker of a job runs ``install_worker`` at start-up.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass

VERBOSE_ENV = "TEXT_JOBS_VERBOSE"
PROGRESS_LOG_INTERVAL_S = 60


@dataclass(frozen=True, kw_only=True)
class LogRule:
    logger: str  # the emitting logger's exact name: a filter on a logger sees only its own records
    message: str  # the start of the formatted message
    why: str


LOG_RULES = (
    LogRule(logger="ray.train.v2._internal.execution.controller.placement_group_cleaner",
            message="Failed to query Ray Train Controller actor state",
            why="without the dashboard the State API never answers; the cleaner retries every second"),
    LogRule(logger="ray.data._internal.progress",
            message="[dataset]: A new progress UI is available",
            why="advice to change the progress settings this module chose"),
    LogRule(logger="ray.data._internal.datasource.parquet_datasource", message="Estimated parquet ",
            why="Ray Data's read-sizing internals, once per dataset"),
)

# (message regex, category): Python warnings that Ray's own code raises on our behalf.
WARNING_RULES = (
    (r"`ExecutionOptions\.exclude_resources` is deprecated", DeprecationWarning),  # Ray Train's DataConfig
)

# C++ lines of Ray's core worker streamed from worker processes to the driver (log_to_driver): no Python
# logger to filter at the source. Ray's own actors keep their constructor arguments alive for their lifetime.
STREAM_RULES = (
    re.compile(r"core_worker\.cc:\d+: Actor with class name: '(PreemptionWatcher|MapWorker\(MapBatches\(.*\)\))' "
               r"and ID: '\w+' has constructor arguments in the object store and max_restarts > 0"),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropKnown(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not message.startswith(self.prefixes)


def install_log_filters() -> None:
    """Idempotent: one filter per rule logger, replaced on a second call; the WARNING_RULES too."""
    remove_log_filters()
    for message, category in WARNING_RULES:
        warnings.filterwarnings("ignore", message=message, category=category)
    by_logger: dict[str, tuple[str, ...]] = {}
    for rule in LOG_RULES:
        by_logger[rule.logger] = by_logger.get(rule.logger, ()) + (rule.message,)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        logger.addFilter(_DropKnown(prefixes))


def remove_log_filters() -> None:
    for rule in LOG_RULES:
        logger = logging.getLogger(rule.logger)
        for old in [f for f in logger.filters if isinstance(f, _DropKnown)]:
            logger.removeFilter(old)
    ours = {(message, category) for message, category in WARNING_RULES}
    warnings.filters[:] = [f for f in warnings.filters
                           if not (f[0] == "ignore" and f[1] is not None and (f[1].pattern, f[2]) in ours)]
    getattr(warnings, "_filters_mutated", lambda: None)()  # drop cached "ignore" decisions


def install_worker() -> None:
    """Ray's worker_process_setup_hook: the filters in every worker process of the job."""
    if not verbose():
        install_log_filters()


def worker_setup_hook():
    """``install_worker`` for ray.init's runtime_env, shipped by value.

    Ray runs the hook before a worker puts the driver's directory on its path, so a hook named by
    module ("jobs.common.console.install_worker") would not import there, or import another checkout.
    """
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return install_worker


def install() -> None:
    """The driver's quiet console; called by every job's CLI (``config.parse_args``) and by ``init_ray``."""
    if verbose():
        remove_log_filters()
        return
    install_log_filters()
    if not sys.stdout.isatty():
        # Progress bars redrawn into a log file are escape sequences; Ray Data logs plain periodic lines instead.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read at import: workers started later
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each download
        # Ray Data's plain progress report (~10 lines) every minute, not every 10 s for a whole training epoch.
        os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", str(PROGRESS_LOG_INTERVAL_S))
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()


def quiet_ray_driver() -> None:
    """After ``ray.init``: worker progress as plain lines off a terminal; drop STREAM_RULES lines."""
    if verbose():
        return
    if not sys.stdout.isatty():
        from ray.data import DataContext

        # A dataset carries this context to the actors that run it (Ray Train's split coordinator): there
        # ray_tqdm would draw bars on the driver's non-terminal output; without it they log progress lines.
        DataContext.get_current().use_ray_tqdm = False
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray: its lines pass unfiltered
        return
    with dispatcher._lock:
        if not any(name == _STREAM_FILTER for name, _ in dispatcher.handlers):
            dispatcher.handlers.insert(0, (_STREAM_FILTER, drop_streamed_noise))  # runs before the printer


_STREAM_FILTER = "text_jobs_drop_known"


def drop_streamed_noise(batch: dict) -> None:
    """Removes STREAM_RULES lines from one batch of streamed worker output, in place."""
    lines = batch.get("lines")
    if lines:
        batch["lines"] = [line for line in lines if not any(rule.search(line) for rule in STREAM_RULES)]
