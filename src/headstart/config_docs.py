"""What every config field means, for ``headstart VERB --help-config``: read from the config
classes themselves (each field's comment, above it or at the end of its line, and each
section's docstring), so the listing and the code never disagree."""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import typing
from functools import cache
from typing import Any

FIELD = re.compile(r"^\s+(\w+)\s*:")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name → its comment in ``cls``'s source: the comment lines just above the field, then
    the comment at the end of its line."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and "fmt:" not in token.string:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines, docs, above = source.splitlines(), {}, []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(comments.get(number, ""))
            continue
        match = FIELD.match(line)
        if match and line.startswith("    ") and not line.startswith("     "):
            docs[match.group(1)] = " ".join([*above, comments.get(number, "")]).strip()
        above = []
    return docs


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint)).replace("typing.", "")


def describe_config(cls: type, prefix: str = "", instance: Any = None) -> list[str]:
    """One line per field, ``section.field  type = default  meaning``, sections introduced by their
    docstrings; the defaults are ``instance``'s (a section's defaults can differ by config)."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    instance = cls() if instance is None else instance
    out = []
    if cls.__doc__ and prefix:
        out.append(f"\n[{prefix.rstrip('.')}] " + " ".join(cls.__doc__.split()))
    nested = []
    for item in dataclasses.fields(cls):
        value = getattr(instance, item.name)
        if dataclasses.is_dataclass(value):
            nested.append((item.name, value))
            continue
        meaning = f"  {docs[item.name]}" if docs.get(item.name) else ""
        out.append(f"  {prefix}{item.name}  {_type_name(hints[item.name])} = {value!r}{meaning}")
    for name, section in nested:
        out.extend(describe_config(type(section), f"{prefix}{name}.", section))
    return out
