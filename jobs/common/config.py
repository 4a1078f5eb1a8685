"""Strict YAML -> frozen dataclass loading, shared by every job.

Unknown keys and wrong types are errors that name the dotted key, so a typo in a
config never silently falls back to a default. One generic override flag,
``--set section.key=value``, parses its value as YAML (``--set train.lr=1e-4``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from jobs.common import console

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match its schema."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (``1e-4``), as YAML 1.2 and JSON do.

    PyYAML follows YAML 1.1, where ``1e-4`` is the *string* "1e-4": ``lr: 1e-4`` would fail the
    float check. Quoted strings stay strings, so the type checks below stay strict.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:0|[1-9][0-9_]*)(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def _check_duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    """Refuse a mapping that repeats a key: YAML loaders keep the last silently, so a second
    ``optim:`` block would drop the first block's settings. Merge keys (``<<: *base``) may still
    be overridden, as YAML intends."""
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                _check_duplicate_keys(value_node, path, seen)
                continue
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            dotted = f"{path}.{name}" if path else name
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                if (key_node.tag, key_node.value) in first_line:
                    earlier = first_line[(key_node.tag, key_node.value)]
                    raise ConfigError(f"duplicate key {dotted} at line {line} (first set at line {earlier}); "
                                      "YAML would silently keep only the last one")
                first_line[(key_node.tag, key_node.value)] = line
            _check_duplicate_keys(value_node, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, f"{path}[{i}]", seen)


def _parse_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type hint ``tp``; build nested dataclasses."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        options = [option for option in get_args(tp) if option is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                error = exc  # try the next option of the union
        if len(options) == 1:  # X | None: X's own message (a Literal's allowed values, say)
            raise ConfigError(f"{error} (or null)") from None
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return build(tp, value, prefix=key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
        return items if origin is tuple else list(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp} in schema")


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Construct dataclass ``cls`` from ``data``, rejecting unknown keys by name."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix}" if prefix else ""
        dotted = ", ".join(f"{prefix}.{name}" if prefix else name for name in unknown)
        raise ConfigError(f"unknown key(s){where}: {dotted}; allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None
    except ValueError as exc:  # __post_init__ validation
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    try:
        node[parts[-1]] = _parse_yaml(raw)
    except ConfigError as exc:
        raise ConfigError(f"--set {dotted}: {exc}") from None


def load(cls: type[T], path: str | Path | None, overrides: typing.Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (or only defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            loaded = _parse_yaml(text) or {}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return build(cls, data)
    except ConfigError as exc:
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}{exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for logging and checkpoints)."""
    return dataclasses.asdict(config)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to dotted keys: MLflow's log_params rejects nesting."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = "" if value is None else str(value)
    return flat


def parse_args(cls: type[T], description: str, argv: typing.Sequence[str] | None = None,
               extra: typing.Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[T, argparse.Namespace]:
    """The common CLI of every job: ``--config file.yaml``, repeated ``--set key=value``, ``--verbose``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file; omitted: embedded defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--verbose", action="store_true",
                        help="print the libraries' known noise too (same as TEXT_JOBS_VERBOSE=1)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.verbose:  # the environment carries it to the Ray workers this process starts
        os.environ[console.VERBOSE_ENV] = "1"
    console.install()  # every job's console, from its first line on
    try:
        config = load(cls, args.config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    return config, args
