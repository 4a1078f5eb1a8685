"""The GPU test set's wiring: marked ``gpu``, selected by ``-m gpu``, skipped cleanly without CUDA."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pytest_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, whatever the machine has
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_gpu_tests_are_selected_by_the_marker_and_skip_without_cuda():
    gpu_tests = [line for path in sorted((REPO / "tests/gpu").glob("test_*.py"))
                 for line in path.read_text().splitlines() if re.match(r"def test_", line)]
    assert len(gpu_tests) >= 6  # DDP fine-tuning, compiled, resume, scoring x2, seq2seq x2

    # one run: the GPU tests beside a CPU test file; -m gpu keeps only the former, and they skip
    done = pytest_run("-q", "-rs", "-m", "gpu", "tests/gpu", "tests/unit/test_batching.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"\b{len(gpu_tests)} skipped\b", done.stdout), done.stdout
    assert re.search(r"\b\d+ deselected\b", done.stdout), done.stdout  # test_batching's tests: not gpu
    assert "passed" not in done.stdout and "error" not in done.stdout.lower()
    assert "CUDA is not available" in done.stdout  # the reason a reader sees
