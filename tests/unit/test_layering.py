"""Imports run one way: runnable jobs on top, the library below them, data_pipeline and model at the floor.

Read with ``ast`` from the source (nothing is imported), every ``import`` counted wherever it stands, a function's
body included. A failure names the file, the line and the wrong-way arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKED = ("jobs", "data_pipeline", "model", "bench", "tools")  # tests/ may import anything, runnable jobs included
# The runnable jobs: what a user starts with ``python -m jobs.<name>``; nothing but tests imports one.
RUNNABLE = frozenset(f"jobs.{path.stem}" for path in (REPO / "jobs").glob("*.py") if path.stem != "__init__")
# (importer's package, imported package): arrows that point up. ``jobs.common`` is the floor of jobs/.
FORBIDDEN = (
    ("data_pipeline", "jobs"), ("model", "jobs"),
    ("jobs.common", "jobs.train"), ("jobs.common", "jobs.scoring"), ("jobs.common", "jobs.evaluation"),
    ("jobs.common", "jobs.kinds"), ("jobs.common", "jobs.corpus"),
    ("jobs.scoring", "jobs.train"),  # scoring shares nothing with the training loop but what common holds
)


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The modules one import statement names (``from a import b`` names ``a.b`` too: b may be a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolved against the importer's package
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def wrong_way(module: str, target: str) -> str | None:
    """Why ``module`` must not import ``target``, or None."""
    if target in RUNNABLE and target != module:
        return "a runnable job: import the library module it uses instead"
    for low, high in FORBIDDEN:
        if within(module, low) and within(target, high):
            return f"{low} must not import {high}"
    return None


def wrong_way_imports(root: Path = REPO) -> list[str]:
    problems = []
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                names = imported(node, module, path.name == "__init__.py")
                where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
                for target in names:  # one arrow a statement: the first name that points the wrong way
                    arrow = wrong_way(module, target)
                    if arrow:
                        problems.append(f"{where}: {module} -> {target} ({arrow})")
                        break
    return sorted(set(problems))


def test_imports_run_one_way():
    problems = wrong_way_imports()
    assert not problems, f"{len(problems)} wrong-way import(s):\n" + "\n".join(problems)


def test_the_checker_sees_a_wrong_way_arrow(tmp_path):
    (tmp_path / "jobs" / "common").mkdir(parents=True)
    (tmp_path / "data_pipeline").mkdir()
    (tmp_path / "jobs" / "common" / "x.py").write_text("def f():\n    from jobs.scoring import pipeline\n")
    (tmp_path / "data_pipeline" / "y.py").write_text("from jobs.common.config import ConfigError\n")
    problems = wrong_way_imports(tmp_path)
    assert problems == ["data_pipeline/y.py:1: data_pipeline.y -> jobs.common.config (data_pipeline must not "
                        "import jobs)",
                        "jobs/common/x.py:2: jobs.common.x -> jobs.scoring (jobs.common must not import jobs.scoring)"]
