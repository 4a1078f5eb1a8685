"""Names and timestamps the jobs give their runs and records."""

from __future__ import annotations

import time
import uuid


def unique_run_name(prefix: str) -> str:
    """``<prefix>-<UTC-free local time>-<6 hex>``: sorts by start time, never collides with a rerun."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def now_iso(t: float | None = None) -> str:
    """UTC time as ``2026-11-27T03:26:22Z`` (manifests, ledger records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))
