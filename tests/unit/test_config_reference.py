"""docs/configuration.md is the code's: regenerated in memory and compared; how comments become descriptions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from jobs.common.config_reference import describe, render_job
from tools.config_reference import OUTPUT, REGENERATE, generate, job_configs


def test_docs_configuration_md_agrees_with_the_config_classes():
    expected = generate()
    actual = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if actual != expected:
        diff = "\n".join(list(difflib.unified_diff(actual.splitlines(), expected.splitlines(), "docs/configuration.md",
                                                   "generated from the code", lineterm="", n=0))[:12])
        raise AssertionError(f"docs/configuration.md disagrees with the config classes; regenerate it with "
                             f"`{REGENERATE}` and commit it:\n{diff}")


def test_every_job_with_a_typed_config_is_found():
    assert set(job_configs()) == {"batch_infer", "evaluate", "finetune_classifier", "init_offline_model",
                                  "prepare_corpus", "promote", "score_partitions", "sweep", "train_seq2seq"}


def test_every_key_of_every_job_has_a_description():
    missing = [f"{job}: {key.key}" for job, cls in job_configs().items() for key in describe(cls, cls())
               if not key.description]
    assert not missing, "give these fields a comment beside them (or their section class a docstring): " + \
        ", ".join(missing)


@dataclass(frozen=True, kw_only=True)
class Inner:
    """The inner section.

    More words that stay out of the table.
    """
    depth: int = 1  # how deep


@dataclass(frozen=True, kw_only=True)
class Item:
    kind: Literal["a", "b"]  # which item
    weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Sample:
    plain: str = "x"  # a trailing comment
    long: int = 3  # a trailing comment that
    # runs on over the next line, since the field after it has its own
    spaced: bool = False  # own comment
    # A block above a field without a trailing comment describes that field,
    # even after a field with one.
    below: str | None = None
    mode: Literal["fast", "slow"] | None = "fast"  # optional choice
    inner: Inner = field(default_factory=Inner)
    items: tuple[Item, ...] = ()  # the items
    where: str = "/somewhere/configs/x.json"  # a path
    pattern: str = "date=*"  # files under <root>/, e.g. date=* or `a|b`
    last: int = 0  # the last field
    # and its comment runs on after the class body's end


def test_comments_beside_fields_become_their_descriptions():
    keys = {key.key: key for key in describe(Sample)}
    assert keys["plain"].description == "a trailing comment"
    assert keys["long"].description == "a trailing comment that runs on over the next line, since the field after it " \
                                       "has its own"
    assert keys["spaced"].description == "own comment"
    assert keys["below"].description == "A block above a field without a trailing comment describes that field, " \
                                        "even after a field with one."
    assert keys["last"].description == "the last field and its comment runs on after the class body's end"
    assert keys["inner"].description == "The inner section."  # a section without a comment: its docstring
    assert keys["inner.depth"].description == "how deep"


def test_types_defaults_and_allowed_values():
    keys = {key.key: key for key in describe(Sample)}
    assert (keys["below"].type, keys["below"].default) == ("str or null", "null")
    assert keys["mode"].allowed == ("fast", "slow", "null") and keys["mode"].default == "fast"
    assert keys["inner"].type == "section" and keys["inner.depth"].default == "1"
    assert keys["items"].type == "list of sections" and keys["items"].default == "[]"
    assert keys["items[].kind"].required and keys["items[].kind"].allowed == ("a", "b")
    assert keys["items[].weight"].default == "1.0"
    assert list(keys) == ["plain", "long", "spaced", "below", "mode", "inner", "inner.depth", "items",
                          "items[].kind", "items[].weight", "where", "pattern", "last"]


def test_rendered_table_escapes_markup_and_replaces_machine_paths():
    table = render_job("sample", Sample, command="python -m sample", replace={"/somewhere": "<repo>"})
    assert "| `where` | str | `<repo>/configs/x.json` |  | a path |" in table
    assert "| `items[].kind` | str | required | `a`, `b` | which item |" in table
    # <root> is no HTML tag and * opens no emphasis; a pipe inside a code span still ends a GFM cell unless escaped
    assert "| `pattern` | str | `date=*` |  | files under \\<root>/, e.g. date=\\* or `a\\|b` |" in table
