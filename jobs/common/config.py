"""Strict YAML -> frozen dataclass loading, shared by every job.

Unknown keys and wrong types are errors that name the dotted key, so a typo in a
config never silently falls back to a default. One generic override flag,
``--set section.key=value``, parses its value as YAML (``--set optim.lr=1e-4``); a value YAML
reads otherwise than meant (``*``, ``[a``, an id ``007`` read as the number 7) is an error that
names the key, the value and the rule, with the quoting that passes it as text. ``--print-config`` prints
what a command line resolves to, as YAML that ``--config`` reads back, secrets masked.

A key that moved is refused by its old name, with the new one: a config class lists them in
``RENAMED_KEYS`` (old dotted key -> new dotted key; ``renamed_keys`` says how they match).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from jobs.common import console
from jobs.common.redaction import redact_mapping

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match its schema.

    ``read_as``: for a string field, the non-string value YAML made of an unquoted scalar (007 -> 7),
    so an override's message can show the text typed and how to quote it.
    """

    def __init__(self, message: str, *, key: str | None = None, read_as: Any = None):
        super().__init__(message)
        self.key = key
        self.read_as = read_as


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
            raise ConfigError(f"{error} (or null)", key=error.key, read_as=error.read_as) from None
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
        if isinstance(value, (bool, int, float, datetime.date)):  # YAML typed an unquoted scalar
            raise ConfigError(f"{key}: expected a string, got {value!r} (YAML reads an unquoted 007, 1e3, yes or "
                              f"2024-01-01 as a {type(value).__name__}: quote the value)", key=key, read_as=value)
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r} (YAML reads an unquoted `a: b` as a "
                              "mapping and `- a` or `[a]` as a list: quote the value)")
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp} in schema")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _is_section(cls: type, dotted: str) -> bool:
    """Whether ``dotted`` names a nested dataclass section of ``cls`` (``input``, ``input.format``)."""
    tp: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            return False
        tp = get_type_hints(tp)[part]
    return dataclasses.is_dataclass(tp)


def _leaves(value: Any, dotted: str) -> typing.Iterator[tuple[str, bool]]:
    """The dotted keys under ``dotted`` that hold a value, each with whether the value is a mapping."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{dotted}.{key}")
    else:
        yield dotted, isinstance(value, dict)


def renamed_keys(cls: type, data: dict[str, Any]) -> list[tuple[str, str]]:
    """(old key, new key) for each key of ``data`` that ``cls.RENAMED_KEYS`` says has moved.

    ``RENAMED_KEYS`` maps an old dotted key to its new dotted key; an old key that was a section renames
    every key below it (``input_format: input.format`` turns ``input_format.encoding`` into
    ``input.format.encoding``), and the longest old key that matches wins (``source: input`` beside
    ``source.train: input.splits.train``). An old key that is also a section of the new schema (a scalar
    ``input: x.parquet`` that became the section ``input``) matches only a value that is not a mapping.
    """
    table: typing.Mapping[str, str] = getattr(cls, "RENAMED_KEYS", {})
    found = []
    for leaf, is_mapping in (item for key, value in data.items() for item in _leaves(value, str(key))):
        parts = leaf.split(".")
        for k in range(len(parts), 0, -1):
            old = ".".join(parts[:k])
            if old in table and not ((k < len(parts) or is_mapping) and _is_section(cls, old)):
                found.append((leaf, ".".join([table[old], *parts[k:]])))
                break
    return found


def _renamed_message(found: typing.Sequence[tuple[str, str, str]]) -> str:
    """One message for every old key found: ``(where, old, new)``, grouped by where it was written."""
    groups: dict[str, list[str]] = {}
    for where, old, new in found:
        groups.setdefault(where, []).append(f"`{old}` was renamed to `{new}`")
    return "; ".join(f"{where}: {', '.join(items)}" for where, items in groups.items()) + \
        " (docs/configuration.md lists every key)"


def build(cls: type[T], data: dict[str, Any], prefix: str = "", base: T | None = None) -> T:
    """Construct dataclass ``cls`` from ``data``, rejecting unknown keys by name.

    A section given in part keeps the rest of its default: a job's defaults for ``run`` (say
    ``checkpoint_metric: val_accuracy``) survive ``--set run.storage_path=...``, not only the
    section class's own. ``base``: the section's default instance that ``data`` overrides.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = renamed_keys(cls, data) if not prefix else []
    if renamed:  # a config built from a mapping, not read by ``load`` (which names the file or --set)
        raise ConfigError(_renamed_message([(cls.__name__, old, new) for old, new in renamed]))
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix}" if prefix else ""
        dotted = ", ".join(f"{prefix}.{name}" if prefix else name for name in unknown)
        raise ConfigError(f"unknown key(s){where}: {dotted}; allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if isinstance(value, dict) and dataclasses.is_dataclass(tp):
            section = getattr(base, name) if base is not None else _field_default(fields[name])
            kwargs[name] = build(tp, value, prefix=key, base=section if isinstance(section, tp) else None)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None
    except ValueError as exc:  # __post_init__ validation
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


# What a leading YAML indicator character does to an unquoted value (YAML 1.1, section 5.3).
_INDICATORS = {
    "*": "starts an alias in YAML (a reference to an &anchor)",
    "&": "starts an anchor in YAML",
    "!": "starts a tag in YAML",
    "#": "starts a comment in YAML, so the value would be empty",
    "%": "starts a directive in YAML",
    "@": "is reserved in YAML and cannot start a plain value",
    "`": "is reserved in YAML and cannot start a plain value",
    "|": "starts a block scalar in YAML",
    ">": "starts a block scalar in YAML",
    "[": "starts a YAML list, which must close with ] (e.g. [a, b])",
    "{": "starts a YAML mapping, which must close with } (e.g. {a: 1})",
    '"': "starts a double-quoted YAML string, which must close with \"",
    "'": "starts a single-quoted YAML string, which must close with '",
}
_NULLS = ("", "~", "null", "Null", "NULL")


def _quoted(dotted: str, raw: str) -> str:
    """How to pass ``raw`` as text from a shell: YAML double quotes inside shell single quotes."""
    if "'" in raw or '"' in raw:
        return "quote it as a YAML string ('...' or \"...\") protected from the shell"
    return f"""quote it: --set '{dotted}="{raw}"'"""


def _override_value(dotted: str, raw: str) -> Any:
    """``raw`` parsed as YAML, or a ConfigError naming the key, the value and the YAML rule it broke."""
    text = raw.strip()
    where = f"--set {dotted}={raw}"
    try:
        value = _parse_yaml(raw)
    except ConfigError as exc:  # a duplicate key inside a mapping value
        raise ConfigError(f"--set {dotted}: {exc}") from None
    except yaml.YAMLError as exc:
        rule = _INDICATORS.get(text[:1]) or f"is not valid YAML ({getattr(exc, 'problem', None) or exc})"
        raise ConfigError(f"{where}: `{text[:1]}` {rule}: {_quoted(dotted, raw)}" if text[:1] in _INDICATORS
                          else f"{where}: the value {rule}: {_quoted(dotted, raw)}") from None
    if (value is None and text not in _NULLS) or (value == "" and text):  # &x, #x, | and > read as nothing
        rule = _INDICATORS.get(text[:1], "reads as nothing in YAML")
        raise ConfigError(f"{where}: `{text[:1]}` {rule}: {_quoted(dotted, raw)}")
    if isinstance(value, str) and not text.startswith(("'", '"')) and re.search(r"\s#", text):
        raise ConfigError(f"{where}: ` #` starts a comment in YAML, so the value would end before it: "
                          f"{_quoted(dotted, raw)}")
    return value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    dotted = dotted.strip()
    apply_value(data, dotted, _override_value(dotted, raw))


def apply_value(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted`` ``a.b.c``, making the sections it lacks."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def _typed_override(exc: ConfigError, overrides: typing.Sequence[str]) -> ConfigError | None:
    """A string field set with ``--set key=007``: the message shows the text typed and how to quote it."""
    if exc.key is None or exc.read_as is None:
        return None
    raw = {a.split("=", 1)[0].strip(): a.split("=", 1)[1] for a in overrides if "=" in a}.get(exc.key)
    if raw is None:
        return None
    return ConfigError(f"--set {exc.key}={raw}: expected a string, but YAML reads {raw.strip()} as the "
                       f"{type(exc.read_as).__name__} {exc.read_as!r}: {_quoted(exc.key, raw)}")


def _refuse_renamed(cls: type, path: str | Path | None, data: dict[str, Any],
                    overrides: typing.Sequence[str]) -> None:
    """A ConfigError naming every old key of the file and of the overrides, each with its new name."""
    found = [(str(path), old, new) for old, new in renamed_keys(cls, data)]
    for assignment in overrides:
        if "=" not in assignment:
            continue  # apply_override says what is wrong with it
        dotted, raw = assignment.split("=", 1)
        try:
            value = _override_value(dotted.strip(), raw)
        except ConfigError:  # a value YAML cannot read: the key alone (apply_override names the value's fault)
            value = None
        nested: dict[str, Any] = {}
        apply_value(nested, dotted.strip(), value)
        found += [("--set", old, new) for old, new in renamed_keys(cls, nested)]
    if found:
        raise ConfigError(_renamed_message(found))


def load(cls: type[T], path: str | Path | None, overrides: typing.Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (or only defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:  # a missing or unreadable --config is a command-line error, not a crash
            raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
        try:
            loaded = _parse_yaml(text) or {}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    _refuse_renamed(cls, path, data, overrides)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return build(cls, data)
    except ConfigError as exc:
        typed = _typed_override(exc, overrides)
        if typed is not None:
            raise typed from None
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}{exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for logging and checkpoints)."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    """``config`` as YAML that ``load`` reads back, secrets masked (jobs.common.redaction)."""
    return yaml.safe_dump(redact_mapping(to_dict(config)), sort_keys=False, allow_unicode=True)


def example_override(cls: type) -> str:
    """The ``--set`` example of ``cls``'s help: its ``EXAMPLE_OVERRIDE``, else its first key at its default."""
    example = getattr(cls, "EXAMPLE_OVERRIDE", None)
    if example:
        return example
    prefix, node = "", cls()
    while True:
        first = next(f for f in dataclasses.fields(node) if f.init)
        value = getattr(node, first.name)
        if not dataclasses.is_dataclass(value):
            return f"{prefix}{first.name}={yaml.safe_dump(value, default_flow_style=True).splitlines()[0]}"
        prefix, node = f"{prefix}{first.name}.", value


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
    """The common CLI of every job: ``--config file.yaml``, repeated ``--set key=value``, ``--print-config``,
    ``--verbose``. With ``--print-config`` it prints the config and exits 0: the job does nothing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file; omitted: embedded defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one config value, parsed as YAML, e.g. --set {example_override(cls)} "
                             "(repeatable; keys: docs/configuration.md)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (after --config and --set) as YAML, secrets masked, and exit")
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
    if args.print_config:
        sys.stdout.write(to_yaml(config))
        parser.exit(0)
    return config, args
