"""A job's config keys as a reference table, read from its frozen config dataclass and the comments beside it.

The descriptions are the comments already in the config classes, so nothing is typed twice:

- a comment after a field (``lr: float = 1e-4  # peak learning rate``) describes that field;
- comment lines just above a field describe it, unless they follow a field that has a comment of its own and
  the next field has one too (or the class ends there): then they continue the earlier field's comment;
- a section (a nested dataclass) without a comment of its own is described by its class docstring's first line.

So a comment that runs on from one field over the next line needs the next field to carry a comment too, as
every one does today. ``tools.config_reference`` renders every job's table into docs/configuration.md.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import re
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

@dataclass(frozen=True)
class Key:
    key: str  # dotted path; items of a list of sections as ``name[].field``
    type: str
    default: str  # as YAML would write it; "" for a section and a required key
    allowed: tuple[str, ...]  # a Literal's values (null included when the key is optional)
    description: str
    required: bool = False  # the key has no default


@dataclass(frozen=True)
class _ClassComments:
    trailing: dict[str, str]  # field -> the comment after it (and what continues it on the next lines)
    above: dict[str, str]  # field -> the comment lines just above it
    docstring: str


@functools.lru_cache(maxsize=None)
def _file_comments(path: str) -> dict[int, tuple[str, bool]]:
    """Line -> (comment text, whether the comment is the whole line)."""
    source = Path(path).read_text(encoding="utf-8")
    lines = source.splitlines()
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            comments[row] = (token.string.lstrip("#").strip(), not lines[row - 1][:col].strip())
    return comments


@functools.lru_cache(maxsize=None)
def _module_tree(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def _class_node(cls: type) -> tuple[str, ast.ClassDef] | None:
    """The source file and class statement of ``cls``, found by its qualified name."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # a built-in
        return None
    if path is None or "<locals>" in cls.__qualname__:  # a class made inside a function is not reached by name
        return None
    node, body = None, _module_tree(path).body
    for part in cls.__qualname__.split("."):
        node = next((stmt for stmt in body if isinstance(stmt, ast.ClassDef) and stmt.name == part), None)
        if node is None:
            return None
        body = node.body
    return path, node


@functools.lru_cache(maxsize=None)
def _class_comments(cls: type) -> _ClassComments:
    found = _class_node(cls)
    if found is None:
        return _ClassComments({}, {}, "")
    path, node = found
    comments = _file_comments(path)

    def whole_lines(first: int, stop: int) -> list[str]:
        return [comments[n][0] for n in range(first, stop) if n in comments and comments[n][1]]

    def is_field(stmt: ast.stmt) -> bool:
        return (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and not ast.unparse(stmt.annotation).startswith(("ClassVar", "typing.ClassVar")))

    trailing = {stmt.target.id: " ".join(comments[n][0] for n in range(stmt.lineno, stmt.end_lineno + 1)
                                         if n in comments and not comments[n][1])
                for stmt in node.body if is_field(stmt)}
    above: dict[str, str] = {}
    body = node.body
    for i, stmt in enumerate(body):
        previous = body[i - 1] if i else None
        block = whole_lines(previous.end_lineno + 1 if previous else node.lineno + 1, stmt.lineno)
        runs_on = previous is not None and is_field(previous) and trailing[previous.target.id]
        if block and runs_on and (not is_field(stmt) or trailing[stmt.target.id]):
            trailing[previous.target.id] += " " + " ".join(block)  # it continues the comment before it
        elif block and is_field(stmt):
            above[stmt.target.id] = " ".join(block)
    last = body[-1] if body else None
    if last is not None and is_field(last) and trailing[last.target.id]:  # comment lines after the class's end
        stop = last.end_lineno + 1
        while stop in comments and comments[stop][1]:
            stop += 1
        if stop > last.end_lineno + 1:
            trailing[last.target.id] += " " + " ".join(whole_lines(last.end_lineno + 1, stop))
    return _ClassComments(trailing, above, (ast.get_docstring(node) or "").strip())


def _description(owner: type, name: str) -> str:
    """The comment of field ``name``, from the most derived class in ``owner``'s MRO that comments it."""
    for klass in owner.__mro__:
        if "__dataclass_fields__" not in vars(klass):
            continue
        comments = _class_comments(klass)
        text = " ".join(part for part in (comments.above.get(name, ""), comments.trailing.get(name, "")) if part)
        if text:
            return text
    return ""


def _class_summary(cls: type) -> str:
    for klass in cls.__mro__:
        if "__dataclass_fields__" in vars(klass) and _class_comments(klass).docstring:
            return _class_comments(klass).docstring.split("\n\n")[0].replace("\n", " ")
    return ""


def _options(tp: Any) -> tuple[list[Any], bool]:
    """A union's members without None, and whether None is one of them."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _type_name(tp: Any) -> str:
    members, optional = _options(tp)
    names = [_plain_type_name(member) for member in members]
    return " or ".join(dict.fromkeys(names)) + (" or null" if optional else "")


def _plain_type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return " or ".join(dict.fromkeys(type(value).__name__ for value in get_args(tp)))
    if dataclasses.is_dataclass(tp):
        return "section"
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item = _type_name(args[0]) if args else "any"
        return "list of sections" if item == "section" else f"list of {item}"
    if origin is dict:
        key, value = get_args(tp) or (Any, Any)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    return getattr(tp, "__name__", str(tp))


def _allowed(tp: Any) -> tuple[str, ...]:
    members, optional = _options(tp)
    values = [_yaml(value) for member in members if get_origin(member) is Literal for value in get_args(member)]
    return (*values, "null") if values and optional else tuple(values)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _yaml(value: Any) -> str:
    """``value`` as one line of YAML flow style: null, true, 0.0001, "007", [a, b]."""
    if isinstance(value, str) and not value.isprintable():  # "\n": JSON's escapes are YAML's double-quoted ones
        return json.dumps(value, ensure_ascii=False)
    text = yaml.safe_dump(_plain(value), default_flow_style=True, allow_unicode=True, sort_keys=False,
                          width=1_000_000).strip()
    return text[:-len("\n...")].strip() if text.endswith("\n...") else text


def _section(tp: Any) -> type | None:
    members, _ = _options(tp)
    return members[0] if len(members) == 1 and dataclasses.is_dataclass(members[0]) else None


def _item_section(tp: Any) -> type | None:
    members, _ = _options(tp)
    if len(members) == 1 and get_origin(members[0]) in (tuple, list):
        args = [a for a in get_args(members[0]) if a is not Ellipsis]
        return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None
    return None


_NO_VALUE = object()


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_VALUE


def describe(cls: type, instance: Any = _NO_VALUE, prefix: str = "") -> list[Key]:
    """Every key of config class ``cls``, sections before their keys, with the defaults ``instance`` holds
    (the class's own defaults when not given)."""
    hints = get_type_hints(cls)
    keys: list[Key] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, dotted = hints[f.name], f"{prefix}{f.name}"
        value = getattr(instance, f.name) if instance is not _NO_VALUE else _field_default(f)
        section, item = _section(tp), _item_section(tp)
        description = _description(cls, f.name)
        if section is not None and value is not None:
            keys.append(Key(dotted, _type_name(tp), "", (), description or _class_summary(section),
                            required=value is _NO_VALUE))
            keys.extend(describe(section, value, f"{dotted}."))
            continue
        keys.append(Key(dotted, _type_name(tp), "" if value is _NO_VALUE else _yaml(value), _allowed(tp),
                        description or (_class_summary(item or section) if item or section else ""),
                        required=value is _NO_VALUE))
        if item is not None:
            keys.extend(describe(item, _NO_VALUE, f"{dotted}[]."))
        elif section is not None:  # an optional section, unset by default: its keys once it is set
            keys.extend(describe(section, _NO_VALUE, f"{dotted}."))
    return keys


_CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _cell(text: str) -> str:
    """Markdown table cell text: markup characters escaped outside code spans, so that ``<output_dir>`` or
    ``date=*`` show as written, and pipes everywhere (GFM wants that even inside code spans)."""
    out, pos = [], 0
    for span in _CODE_SPAN.finditer(text):
        out += [_escape(text[pos:span.start()]), span.group(0)]
        pos = span.end()
    out.append(_escape(text[pos:]))
    return "".join(out).replace("|", "\\|")


def _escape(plain: str) -> str:
    """Backslashes before what could start markup; ``_`` inside a word (``num_cpus``) starts none in GFM."""
    return re.sub(r"[\\`*<\[]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", lambda m: "\\" + m.group(0), plain)


def _code(text: str) -> str:
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def render_job(name: str, cls: type, *, command: str, configs: typing.Sequence[str] = (),
               replace: typing.Mapping[str, str] | None = None) -> str:
    """One job's section of the reference: a heading, how it is run, and a table of its keys.

    ``replace``: text swapped in the defaults, e.g. this checkout's absolute path for a placeholder, so the
    page reads the same in every clone.
    """
    lines = [f"## {name}", "", f"`{command}` · config class `{cls.__module__}.{cls.__qualname__}`"]
    if configs:
        lines[-1] += " · shipped configs: " + ", ".join(f"[{c}](../{c})" for c in configs)
    lines += ["", "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for key in describe(cls, cls()):
        default = key.default
        for old, new in (replace or {}).items():
            default = default.replace(old, new)
        cells = [f"`{key.key}`", _cell(key.type), "required" if key.required else _code(default),
                 ", ".join(_code(v) for v in key.allowed), _cell(key.description)]
        lines.append("| " + " | ".join(cells) + " |")
    renamed = getattr(cls, "RENAMED_KEYS", {})
    if renamed:  # jobs.common.config refuses each by its old name, naming the new one
        lines += ["", "Renamed keys (a config that uses an old one is refused with the new name; a renamed section "
                      "renames every key below it):", "", "| old key | new key |", "|---|---|"]
        lines += [f"| `{old}` | `{new}` |" for old, new in renamed.items()]
    return "\n".join(lines) + "\n"
