"""Command-line flags derived from the config dataclasses (delphi's idiom), so a setting is
declared once: its name, type, default and help (the field's docstring) come from the config
class, and the parsed flags map back onto it with one call.

Flags default to None ("not given"), so an unset flag keeps the dataclass default and the
config's own `__post_init__` validation judges every value; a ValueError from it becomes the
one-line SafesailError the CLI prints.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from safesail.errors import SafesailError

C = TypeVar("C")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right after its annotation), whitespace
    folded to single spaces (argparse re-wraps the help to the terminal)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field's type: scalars, Paths, Literal choices, booleans,
    tuples/lists of those (the flag repeats: `--scorer a --scorer b`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _flag_type(args[0])
        raise TypeError(f"cannot derive a flag for the union {annotation}")
    if origin is typing.Literal:
        choices = list(typing.get_args(annotation))
        return {"choices": choices, "type": type(choices[0])}
    if origin in (tuple, list):
        inner = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return {**_flag_type(inner[0]), "action": "append"}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str, Path):
        return {"type": annotation}
    raise TypeError(f"cannot derive a flag for the type {annotation}")


def add_config_flags(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    names: Iterable[str],
    *,
    flags: dict[str, str] | None = None,
    helps: dict[str, str] | None = None,
    choices: dict[str, list[Any]] | None = None,
) -> None:
    """Add one flag per named field of the config dataclass `cls`: `--field-name` (or the
    name given in `flags`), typed from the annotation, help from the field's docstring with
    the default appended; `choices` names the allowed values of fields a registry validates
    (a `str` field whose values are known only at run time). The parsed value lands under the
    field's own name."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    docs = field_docs(cls)
    for name in names:
        if name not in defaults:
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        spec = _flag_type(hints[name])
        if choices and name in choices:
            spec["choices"] = list(choices[name])
        f = defaults[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = (helps or {}).get(name) or docs.get(name, "")
        if default is not None and spec.get("action") is not argparse.BooleanOptionalAction:
            shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
            text = f"{text} (default: {shown})".strip()
        flag = (flags or {}).get(name) or "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=text.replace("%", "%%"), **spec)


def command_name(args: argparse.Namespace) -> str:
    """The subcommand as typed ("collect", "sae add"), for messages that name its `--help`."""
    action = getattr(args, "action", None)
    command = getattr(args, "command", None)
    if not isinstance(command, str):
        return ""
    return f"{command} {action}" if isinstance(action, str) else command


def config_from_args(
    cls: type[C], args: argparse.Namespace, names: Iterable[str], **extra: Any
) -> C:
    """The config with every given flag among `names` (None: not given, the default stays)
    and `extra` (values the command computes); a value the config refuses is a one-line
    error."""
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if typing.get_origin(hints[name]) is tuple or (
            typing.get_origin(hints[name]) in (typing.Union, types.UnionType)
            and any(typing.get_origin(a) is tuple for a in typing.get_args(hints[name]))
        ):
            value = tuple(value)
        given[name] = value
    try:
        return cls(**{**given, **extra})
    except ValueError as exc:
        usage = " ".join(filter(None, ["safesail", command_name(args), "--help"]))
        raise SafesailError(f"{exc} — fix that flag's value (`{usage}` lists them)") from None
