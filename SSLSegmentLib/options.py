"""Settings that carry their own command-line option (torch-free).

A field of a settings dataclass (``config.TrainConfig``) declares its default, its flag, help,
choices and type once, with :func:`option`; everything else is generated from that:

- :func:`add_arguments`: the ``argparse`` arguments (``sslsegment train``);
- :func:`values_from_args`: the parsed arguments back to field values (``cli.config_from_args``);
- :func:`to_argv`: field values to a command line (the Slicer and web rounds, ``jobs.train_command``).

So a new setting is one field; the CLI, the child command line and the panels follow.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

METADATA_KEY = "cli"
_UNSET = object()


@dataclass(frozen=True)
class Option:
    """How one setting appears on the command line."""

    flag: str
    help: str | None = None
    type: Callable[[str], Any] | None = None
    """argparse's ``type``: text -> the parsed argument (int, float, Path, a parser)."""
    choices: Sequence[str] | None = None
    metavar: str | tuple[str, ...] | None = None
    nargs: int | None = None
    action: str | None = None
    """``store_true`` (a switch) or ``append`` (repeatable)."""
    parser_default: Any = _UNSET
    """What argparse holds when the flag is absent; unset: the field's default."""
    to_value: Callable[[Any], Any] | None = None
    """Parsed argument -> field value (e.g. ``--no-amp`` -> ``amp``); None: as parsed."""
    to_text: Callable[[Any], list[str]] | None = None
    """Field value -> the words after the flag (``[]``: the flag alone); None: ``str(value)``."""
    group: str | None = None
    """The argparse group the flag is listed under (the parser names the groups)."""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def option(default: Any = None, flag: str | None = None, *, default_factory: Callable[[], Any] | None = None,
           **cli: Any) -> Any:
    """A dataclass field; with ``flag``, it is also a command-line option (:class:`Option`)."""
    metadata = {METADATA_KEY: Option(flag, **cli)} if flag else {}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def cli_fields(settings_class) -> list[tuple[dataclasses.Field, Option]]:
    """``(field, option)`` of every field that the command line exposes, in field order."""
    return [(f, f.metadata[METADATA_KEY]) for f in dataclasses.fields(settings_class) if METADATA_KEY in f.metadata]


def field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def choices_of(settings_class, name: str) -> tuple[str, ...]:
    """The choices a setting's option offers (the panels list the same ones)."""
    [choices] = [tuple(o.choices or ()) for f, o in cli_fields(settings_class) if f.name == name]
    return choices


def parser_default(f: dataclasses.Field, opt: Option) -> Any:
    if opt.action == "store_true":
        return False
    if opt.action == "append":
        return []
    return field_default(f) if opt.parser_default is _UNSET else opt.parser_default


def add_arguments(parser: argparse.ArgumentParser, settings_class,
                  groups: dict[str, Any] | None = None) -> None:
    """One argument per option of ``settings_class`` (in field order, flags with a ``group``
    under that argparse group); ``{default}`` in a help text becomes the field's default."""
    for f, opt in cli_fields(settings_class):
        target = (groups or {}).get(opt.group, parser) if opt.group else parser
        text = opt.help.replace("{default}", str(field_default(f))) if opt.help else None
        kwargs: dict[str, Any] = {"default": parser_default(f, opt), "help": text}
        if opt.action:
            kwargs["action"] = opt.action
        for key in ("type", "choices", "metavar", "nargs"):
            value = getattr(opt, key)
            if value is not None:
                kwargs[key] = list(value) if key == "choices" else value
        target.add_argument(opt.flag, **kwargs)


def values_from_args(settings_class, args: argparse.Namespace) -> dict[str, Any]:
    """``{field: value}`` from parsed arguments; an argument missing from ``args`` (the saved
    command of an older run) counts as not given."""
    values = {}
    for f, opt in cli_fields(settings_class):
        parsed = getattr(args, opt.dest, parser_default(f, opt))
        values[f.name] = opt.to_value(parsed) if opt.to_value else parsed
    return values


def to_argv(settings: Any, names: Iterable[str] | None = None, always: Iterable[str] = ()) -> list[str]:
    """The command-line words for ``settings`` (an instance of a dataclass with options): every
    field in ``names`` (default: all) whose value differs from its default, and those in
    ``always`` whatever their value (None is never written)."""
    always = set(always)
    wanted = None if names is None else set(names)
    options = {f.name: (f, opt) for f, opt in cli_fields(type(settings))}
    argv: list[str] = []
    for name, (f, opt) in options.items():
        if wanted is not None and name not in wanted:
            continue
        value = getattr(settings, name)
        if value is None or (name not in always and value == field_default(f)):
            continue
        words = opt.to_text(value) if opt.to_text else _words(value, opt)
        if words is None:
            continue
        argv += _flagged(opt.flag, words, opt.action)
    return argv


def _words(value: Any, opt: Option) -> list[str] | None:
    if opt.action == "store_true":
        return [] if value else None
    return [str(opt.type(value) if opt.type in (int, float) else value)]


def _flagged(flag: str, words: list[str], action: str | None) -> list[str]:
    if action == "append":
        return [part for word in words for part in (flag, word)]
    return [flag, *words]
