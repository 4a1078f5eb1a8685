"""Write docs/configuration.md, every job's config keys, from the typed configs (``make docs``).

    python -m tools.config_reference           # rewrite docs/configuration.md
    python -m tools.config_reference --check   # exit 1 when it and the code disagree

A job is a ``jobs/<name>.py`` whose ``main`` calls ``config_lib.parse_args(<ConfigClass>, ...)``, found by
reading the source, so a new job is listed without being named here. The descriptions are the comments beside
the fields (jobs.common.config_reference says how they are read).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path

from jobs.common.config_reference import render_job

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"
REGENERATE = "python -m tools.config_reference (or make docs)"

HEADER = """# Configuration reference

Generated from the jobs' typed config classes and the comments beside their fields by
`python -m tools.config_reference` (or `make docs`); do not edit it by hand: tests/unit/test_config_reference.py
fails when this page and the code disagree.

Every job reads one YAML file (`--config file.yaml`; without it, the defaults below) and any number of
`--set key=value` overrides, each value parsed as YAML. Keys are the dotted paths below: `optim.lr: 3e-4` under
`optim:` in the file is `--set optim.lr=3e-4` on the command line. An unknown key or a value of the wrong type
is an error that names the key. `--print-config` prints the config a command line resolves to, as YAML with
secrets masked, and exits without running the job. A key of a list of sections is written `name[].key`: each
item of the list is a mapping with those keys.
"""


def _config_class_name(path: Path) -> str | None:
    """The class a job module passes to ``parse_args``, read from its source."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "parse_args"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "config_lib"
                and node.args and isinstance(node.args[0], ast.Name)):
            return node.args[0].id
    return None


def job_configs() -> dict[str, type]:
    """Job name -> its config class, for every job with a typed config, by name."""
    found = {}
    for path in sorted((REPO / "jobs").glob("*.py")):
        name = _config_class_name(path)
        if name is not None:
            found[path.stem] = getattr(importlib.import_module(f"jobs.{path.stem}"), name)
    return found


def generate() -> str:
    jobs, sections = job_configs(), []
    for job, cls in jobs.items():
        configs = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob(f"{job}*.yaml")
                         if p.name.split(".")[0] == job)
        sections.append(render_job(job, cls, command=f"python -m jobs.{job}", configs=configs,
                                   replace={str(REPO): "<repo>"}))
    contents = "\n".join(f"- [{job}](#{job})" for job in jobs)
    return "\n".join([HEADER, contents, "", *sections])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text:
            return 0
        print(f"{OUTPUT.relative_to(REPO)} disagrees with the config classes: run {REGENERATE}", file=sys.stderr)
        return 1
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
