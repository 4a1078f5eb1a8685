"""batch_infer's output staging: non-empty targets refused, atomic publish and replace, resume bookkeeping.

Real files on the local disk, no Ray: the data files a pipeline would write are written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.common import durable
from jobs.scoring.run_staging import RunStaging, TargetOccupied, plan_chunks

FINGERPRINT = {"model": {"name": "m", "version": "1"}, "settings": {"max_length": 32}}


def inputs(*names: str, size: int = 10) -> list[dict]:
    return [{"file": f"/in/{n}.parquet", "size": size, "mtime_ns": 1, "rows": 2} for n in names]


def write(path: Path, data: bytes = b"rows") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def score_chunk(staging: RunStaging, name: str, sources: list[dict], files: list[str]) -> dict:
    """What a chunk's pipeline leaves: its data files in the write location, then its commit."""
    for relative in files:
        write(Path(staging.write_uri) / relative, name.encode())
    entries = [{"path": f, "rows": 1, "kind": "rejected" if f.startswith("_rejected/") else "scored"} for f in files]
    return staging.commit_chunk(name, {"inputs": sources, "files": entries, "rows_in": len(files),
                                       "rows_out": len(files), "rows_rejected": 0, "rejected_by_reason": {},
                                       "seconds": 0.1, "scored_by": "run"}).record


def manifest_of(*records: dict) -> dict:
    return {"files": [f for r in records for f in r["files"]], "rows_in": sum(r["rows_in"] for r in records)}


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_plan_chunks_packs_whole_files_up_to_the_row_budget():
    assert plan_chunks([5, 5, 5, 20, 1, 0], 10) == [[0, 1], [2], [3], [4, 5]]
    assert plan_chunks([], 10) == []


def test_a_non_empty_target_is_refused_before_any_work(tmp_path: Path, capsys):
    from jobs.batch_infer import main

    write(tmp_path / "scores" / "daily" / "part-old.parquet")
    with pytest.raises(TargetOccupied, match="replace=true"):
        RunStaging(str(tmp_path / "scores"), "daily").check_target()
    RunStaging(str(tmp_path / "scores"), "daily", replace=True).check_target()
    (tmp_path / "scores" / "empty").mkdir()
    RunStaging(str(tmp_path / "scores"), "empty").check_target()  # an empty directory is no output

    code = main(["--set", f"input.path={tmp_path / 'missing.parquet'}", "--set", f"output_dir={tmp_path / 'scores'}",
                 "--set", "run_name=daily", "--set", f"model={tmp_path / 'no-model'}"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{tmp_path / 'scores' / 'daily'} is not empty" in err and "replace=true" in err
    assert tree(tmp_path / "scores") == ["daily/part-old.parquet"]  # untouched, nothing staged


def test_publish_renames_the_complete_output_into_place_without_unlisted_files(tmp_path: Path):
    staging = RunStaging(str(tmp_path / "scores"), "run")
    assert staging.open(FINGERPRINT, inputs("a", "b")) == []
    first = score_chunk(staging, "c0", inputs("a"), ["part-a.parquet", "_rejected/part-a.parquet"])
    write(Path(staging.write_uri) / "part-retried-task.parquet")  # a killed write task's leftover
    second = score_chunk(staging, "c1", inputs("b"), ["part-b.parquet"])
    assert not (tmp_path / "scores" / "run").exists()  # a crash up to here leaves nothing at the target

    staging.publish(manifest_of(first, second))

    target = tmp_path / "scores" / "run"
    assert tree(target) == ["_SUCCESS", "_rejected/part-a.parquet", "part-a.parquet", "part-b.parquet"]
    assert json.loads((target / "_SUCCESS").read_text())["rows_in"] == 3
    assert not (tmp_path / "scores" / "_staging" / "run").exists()


def test_replace_swaps_the_whole_output_and_without_it_publish_refuses(tmp_path: Path):
    target = tmp_path / "scores" / "run"
    for old in ("part-old.parquet", "_rejected/part-old.parquet", "_SUCCESS"):
        write(target / old, b"old")

    refused = RunStaging(str(tmp_path / "scores"), "run")  # the target filled up while this run scored
    refused.open(FINGERPRINT, inputs("a"))
    record = score_chunk(refused, "c0", inputs("a"), ["part-new.parquet"])
    with pytest.raises(TargetOccupied):
        refused.publish(manifest_of(record))
    assert (target / "_SUCCESS").read_bytes() == b"old" and refused.has_progress()  # kept for a resume

    replacing = RunStaging(str(tmp_path / "scores"), "run", replace=True)
    assert [c.name for c in replacing.open(FINGERPRINT, inputs("a"))] == ["c0"]  # resumed, not rescored
    replacing.publish(manifest_of(record))

    assert tree(target) == ["_SUCCESS", "part-new.parquet"]  # no old file beside the new ones
    assert json.loads((target / "_SUCCESS").read_text())["files"] == record["files"]
    assert not (tmp_path / "scores" / "_staging" / "run").exists()


def test_replace_dir_swaps_in_one_step_or_falls_back_to_two_renames(tmp_path: Path, monkeypatch):
    for name in ("new", "target"):
        write(tmp_path / name / f"{name}.txt")
    old = durable.replace_dir(str(tmp_path / "new"), str(tmp_path / "target"), str(tmp_path / "aside"))
    assert tree(tmp_path / "target") == ["new.txt"] and tree(Path(old)) == ["target.txt"]
    assert old == str(tmp_path / "new")  # exchanged in place (renameat2 works on this filesystem)

    write(tmp_path / "newer" / "newer.txt")
    monkeypatch.setattr(durable, "exchange_dirs", lambda a, b: False)  # a kernel or filesystem without it
    old = durable.replace_dir(str(tmp_path / "newer"), str(tmp_path / "target"), str(tmp_path / "aside"))
    assert tree(tmp_path / "target") == ["newer.txt"] and old == str(tmp_path / "aside")
    assert tree(Path(old)) == ["new.txt"]


def test_resume_keeps_valid_chunks_only(tmp_path: Path):
    staging = RunStaging(str(tmp_path / "scores"), "run")
    staging.open(FINGERPRINT, inputs("a", "b", "c"))
    for name in ("a", "b", "c"):
        score_chunk(staging, f"c-{name}", inputs(name), [f"part-{name}.parquet"])

    again = RunStaging(str(tmp_path / "scores"), "run")
    assert [c.name for c in again.open(FINGERPRINT, inputs("a", "b", "c"))] == ["c-a", "c-b", "c-c"]

    write(Path(staging.write_uri) / "part-b.parquet", b"")  # a data file truncated by a host crash
    changed = inputs("a") + inputs("b") + inputs("c", size=99)  # input c was rewritten since
    kept = RunStaging(str(tmp_path / "scores"), "run").open(FINGERPRINT, changed)
    assert [c.name for c in kept] == ["c-a"]

    other_model = {**FINGERPRINT, "model": {"name": "m", "version": "2"}}
    assert RunStaging(str(tmp_path / "scores"), "run").open(other_model, changed) == []  # starts fresh
    assert not Path(staging.write_uri).exists()  # the other model's files are gone, never published
