"""Command-line flags derived from option dataclasses.

Benchmarks declare their options as dataclasses whose fields carry their help text
(:func:`pathbench.benches.base.option`); this module turns them into argparse flags and
back, so that the benchmarks themselves know no command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from pathbench.errors import PathbenchError


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type behind ``X | None`` / ``Optional[X]``, whether it is a list)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
    if origin in (list, tuple):
        return str, True
    return annotation, False


def flag_name(field: dataclasses.Field) -> str:
    """``--batch-size`` for ``batch_size``; a True-by-default boolean becomes ``--no-...``."""
    if field.metadata.get("flag"):
        return field.metadata["flag"]
    stem = field.name.replace("_", "-")
    return f"--no-{stem}" if field.default is True else f"--{stem}"


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options_type: type,
                only: tuple[str, ...] | None = None) -> None:
    """Add one flag per field of ``options_type`` (or of the fields named in ``only``)."""
    hints = typing.get_type_hints(options_type)
    for field in dataclasses.fields(options_type):
        if only is not None and field.name not in only:
            continue
        kind, is_list = _base_type(hints[field.name])
        flag = flag_name(field)
        help_text = field.metadata.get("help", "")
        common: dict[str, Any] = {"dest": field.name, "help": help_text}
        if kind is bool:
            action = "store_false" if field.default is True else "store_true"
            parser.add_argument(flag, action=action, default=field.default, **common)
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.metadata.get("choices"):
            common["choices"] = field.metadata["choices"]
        if field.metadata.get("metavar"):
            common["metavar"] = field.metadata["metavar"]
        if is_list:
            parser.add_argument(flag, nargs="+", default=None, **common)
        else:
            parser.add_argument(flag, type=_converter(kind, flag), default=default, **common)


def _converter(kind: Any, flag: str):
    if kind in (int, float):
        def convert(text: str) -> Any:
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{flag} expects {'an integer' if kind is int else 'a number'}, "
                                                 f"got {text!r}") from None
        convert.__name__ = kind.__name__
        return convert
    return str


def options_from_args(options_type: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An ``options_type`` instance from the parsed flags (fields absent from ``args`` keep
    their defaults); ``overrides`` win."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(options_type) if hasattr(args, f.name)}
    for field in dataclasses.fields(options_type):
        if field.name in values and values[field.name] is None and field.default_factory is not dataclasses.MISSING:
            values.pop(field.name)  # an unused list flag keeps the field's own default
    values.update(overrides)
    try:
        return options_type(**values)
    except TypeError as exc:  # a programming error in a plugin's options, said plainly
        raise PathbenchError(f"cannot build {options_type.__name__} from the flags: {exc}") from exc
