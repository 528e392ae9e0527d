"""The config schema as a person reads it: every dotted key with its type, default, bounds and description.

`genrec config explain` prints it, and tests/test_config_docs.py checks configs/local.yaml's comments against it, so
the schema (genrec.config, where each field's `Field(description=...)` lives) is the one place a key is documented.

A description's **summary** is its first sentence without the period: the text up to the first period followed by
white space, or the whole text. It is the key's one-line help and, word for word, the key's trailing comment in
configs/local.yaml (a comment continued on the lines below, aligned under its `#`, is joined with single spaces).

Keys of a mapping whose entries are sections (`eval.tasks`, `tune.space`) are written with `*` for the entry's name:
`eval.tasks.*.targets` documents `eval.tasks.B.targets`.
"""

from __future__ import annotations

import difflib
import inspect
import re
import textwrap
import types
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from genrec.config import ConfigError, GenrecConfig

REQUIRED = "(required)"


def summary(description: str) -> str:
    """The first sentence of a description, without its period (see the module docstring)."""
    end = re.search(r"\.(\s|$)", description)
    return description[:end.start()] if end else description


@dataclass(frozen=True)
class KeyDoc:
    """One documented key. `default` is as YAML shows it ("" for a section, whose keys follow; REQUIRED where the key
    has none); `choices` are the values its Literal types allow; `bounds` its numeric bounds and other constraints as a
    person reads them (`> 0`, `1..65535`)."""

    key: str
    type: str
    default: str
    choices: tuple
    bounds: str
    description: str
    section: bool

    @property
    def summary(self) -> str:
        return summary(self.description)


def key_docs(model: type[BaseModel] = GenrecConfig, prefix: str = "",
             instance: BaseModel | None = None) -> Iterator[KeyDoc]:
    """Every key of `model` and of its sections, depth first in the schema's order. `instance`: a section's default
    when the parent gives one (cluster.head's default node differs from NodeGroupConfig's), whose values are then
    the defaults shown."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name) if instance is not None else _field_default(field)
        sub = _section_type(field.annotation)
        entry = _entry_type(field.annotation)
        yield KeyDoc(key=key, type=type_name(field.annotation),
                     default="" if isinstance(value, BaseModel) else _yaml(value), choices=_choices(field.annotation),
                     bounds=bounds(field), description=field.description or "", section=bool(sub or entry))
        if sub:
            # A section a factory builds (storage) shows its class's defaults: its validators resolve paths on this
            # machine.
            given = value if isinstance(value, BaseModel) and field.default_factory is None else None
            yield from key_docs(sub, f"{key}.", given)
        elif entry:
            yield KeyDoc(key=f"{key}.*", type="section", default="", choices=(), bounds="",
                         description=" ".join(inspect.cleandoc(entry.__doc__ or "").split()), section=True)
            yield from key_docs(entry, f"{key}.*.")


def _field_default(field: FieldInfo) -> Any:
    """The default a field takes (a factory's value), or PydanticUndefined where it has none."""
    return field.default_factory() if field.default_factory is not None else field.default


def _members(tp: Any) -> tuple:
    """The members of a union (`int | None` -> (int, NoneType)); any other type alone."""
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def _section_type(tp: Any) -> type[BaseModel] | None:
    """The section class of a field typed as one (optionally null)."""
    for member in _members(tp):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _entry_type(tp: Any) -> type[BaseModel] | None:
    """The section class of a field's mapping entries (`dict[str, TaskConfig]`)."""
    for member in _members(tp):
        if get_origin(member) is dict:
            value = get_args(member)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return value
    return None


def type_name(tp: Any) -> str:
    """A type as a person reads it: `float`, `int | "auto"`, `"time" | "leave_one_out"`, `list[float]`, `section`."""
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = get_args(tp)
        # null last, as "str | null" reads
        return " | ".join(type_name(m) for m in sorted(members, key=lambda m: m is type(None)))
    if origin is Literal:
        return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in get_args(tp))}]"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    return getattr(tp, "__name__", str(tp))


def _choices(tp: Any) -> tuple:
    return tuple(v for member in _members(tp) if get_origin(member) is Literal for v in get_args(member))


def _number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounds(field: FieldInfo) -> str:
    """The field's constraints: `> 0`, `0..1`, `>= 0 and < 1`, `at least 16 characters`, `matches PATTERN`."""
    c: dict[str, Any] = {}
    for item in field.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            if getattr(item, attr, None) is not None:
                c[attr] = getattr(item, attr)
    parts = []
    if "ge" in c and "le" in c:
        parts.append(f"{_number(c['ge'])}..{_number(c['le'])}")
    else:
        parts += [f"{op} {_number(c[attr])}" for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                  if attr in c]
    if "min_length" in c:
        parts.append(f"at least {c['min_length']} characters")
    if "max_length" in c:
        parts.append(f"at most {c['max_length']} characters")
    if "pattern" in c:
        parts.append(f"matches {c['pattern']}")
    return " and ".join(parts)


def _plain(value: Any) -> Any:
    """A default as the YAML a person would write: sections inside a mapping or list by their non-default keys."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _yaml(value: Any) -> str:
    if value is PydanticUndefined:
        return REQUIRED
    text = yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False, width=10**6).strip()
    return text.removesuffix("...").strip()  # a scalar document's end marker


def doc_for(key: str, docs: list[KeyDoc] | None = None) -> KeyDoc | None:
    """The KeyDoc of a dotted key as written in a config (`eval.tasks.B.targets` -> `eval.tasks.*.targets`; a
    tune.space entry's name has dots of its own). Where several match, the one with the most named parts."""
    docs = list(key_docs()) if docs is None else docs
    matches = [d for d in docs if re.fullmatch(r"\.".join(".+" if p == "*" else re.escape(p)
                                                           for p in d.key.split(".")), key)]
    return max(matches, key=lambda d: len(d.key.split(".")), default=None)


def select(key: str | None) -> list[KeyDoc]:
    """The docs `genrec config explain KEY` prints: every key (None), or KEY and the keys under it."""
    docs = list(key_docs())
    if not key:
        return docs
    found = doc_for(key, docs)
    if found is None:
        names = [d.key for d in docs]
        near = [n for n in names if n.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
        near += [n for n in difflib.get_close_matches(key, names, n=3, cutoff=0.8) if n not in near]
        hint = f"did you mean {', '.join(near[:5])}? " if near else ""
        raise ConfigError(f"config key {key!r} is unknown; {hint}(`genrec config explain` lists every key)")
    return [found] + [d for d in docs if d.key.startswith(found.key + ".")]


def format_docs(docs: list[KeyDoc], width: int = 100) -> str:
    """`key: type = default  [bounds]`, then the description wrapped and indented; a blank line between keys. A default
    too long for the header line gets a line of its own."""
    indent = " " * 4
    blocks = []
    for d in docs:
        head = f"{d.key}: {d.type}"
        tail = f"  [{d.bounds}]" if d.bounds else ""
        lines = []
        if d.default == REQUIRED:
            head += f"  {REQUIRED}"
        elif d.default and len(f"{head} = {d.default}{tail}") <= width:
            head += f" = {d.default}"
        elif d.default:
            lines = textwrap.wrap(f"default: {d.default}", width, initial_indent=indent,
                                  subsequent_indent=indent * 2, break_on_hyphens=False)
        lines = [head + tail] + lines + textwrap.wrap(d.description, width, initial_indent=indent,
                                                      subsequent_indent=indent, break_on_hyphens=False)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
