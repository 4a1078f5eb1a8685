"""Fault injection for tests: slow a job down so that a fault lands mid-run, until the test says the fault is in.

A test sets a job's delay variable (seconds each training step, or each predictor call, sleeps) and may name
a file in ``DELAY_END_ENV``: once that file exists the delays stop, and the rest of the run, its recovery
included, goes at full speed. Every node of a test's cluster runs on the test's machine and sees the file.
Nothing reads these variables outside tests.
"""

from __future__ import annotations

import os
import time

DELAY_END_ENV = "TEXT_JOBS_TEST_DELAY_END_FILE"


class InjectedDelay:
    def __init__(self, seconds: float, end_file: str | None = None):
        self.seconds = seconds
        self.end_file = end_file
        self.ended = False

    @classmethod
    def from_env(cls, seconds_env: str) -> InjectedDelay | None:
        """The delay the environment asks for; None without one."""
        seconds = float(os.environ.get(seconds_env) or 0)
        return cls(seconds, os.environ.get(DELAY_END_ENV) or None) if seconds > 0 else None

    def sleep(self) -> None:
        if not self.ended and self.end_file is not None:
            self.ended = os.path.exists(self.end_file)
        if not self.ended:
            time.sleep(self.seconds)


def delay_env(seconds_env: str) -> dict[str, str]:
    """The delay's variables that are set here: for workers and actors that do not see this environment."""
    return {key: os.environ[key] for key in (seconds_env, DELAY_END_ENV) if os.environ.get(key)}
