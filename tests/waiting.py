"""Polling until something a test started has happened (a checkpoint recorded, actors up, a file out)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise TimeoutError(f"timed out waiting for {what}")
