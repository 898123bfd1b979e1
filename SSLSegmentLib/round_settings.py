"""What a panel (Slicer, the browser UI) chooses for a training round: a view on ``TrainConfig``
(torch-free).

:class:`TrainSettings` is generated from ``TrainConfig``'s fields: the same names, defaults and
command-line options, so nothing here repeats a default. It is what a round's ``round.json``
keeps under ``settings`` (older files load too: unknown keys are dropped, missing ones take the
default) and what becomes the child's ``sslsegment train`` arguments (:meth:`to_argv`).
The panels' choice lists are here too, from the same definition and the catalogue.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .catalogue import METHOD_NAMES, NETWORK_NAMES, NETWORK_SIZES
from .config import PRESET_NAMES, TrainConfig
from .errors import InputError
from .options import choices_of, to_argv

PANEL_FIELDS = ("method", "network", "dim", "iterations", "device", "seed", "size", "preset", "time_budget",
                "spacing")
"""The ``TrainConfig`` fields a panel sets; anything else goes in ``extra_args``."""
ALWAYS_WRITTEN = ("method", "network", "dim", "device", "seed")
"""Written on the child's command line even at their default, so ``round.json``'s command
says what the round trained with whatever a later version's defaults are."""
ALIASES = {"extraArgs": "extra_args", "timeBudget": "time_budget"}
"""The logic's camelCase keywords (Slicer style) for the fields."""

# The panels' choices. "preset" in size and spacing: leave it to the preset (None).
METHOD_CHOICES = METHOD_NAMES
NETWORK_CHOICES = NETWORK_NAMES
PRESET_CHOICES = PRESET_NAMES
DIM_CHOICES = choices_of(TrainConfig, "dim")
DEVICE_CHOICES = choices_of(TrainConfig, "device")
SIZE_CHOICES = ("preset", *NETWORK_SIZES)
SPACING_CHOICES = ("preset", "data", "fit")


def _view_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """``PANEL_FIELDS`` of ``TrainConfig``: type, default and option (metadata) as they are there."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    return [(name, fields[name].type, dataclasses.field(default=fields[name].default, metadata=fields[name].metadata))
            for name in PANEL_FIELDS]


def _to_dict(self) -> dict:
    """What ``round.json`` keeps under ``settings``."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _to_argv(self) -> list[str]:
    """The ``sslsegment train`` arguments of these settings (``extra_args`` last): a time budget
    replaces the iteration count (the budget fixes it)."""
    length = ("time_budget",) if self.time_budget else ("iterations",)
    names = [n for n in PANEL_FIELDS if n not in ("iterations", "time_budget")] + list(length)
    return to_argv(self, names=names, always=(*ALWAYS_WRITTEN, *length)) + list(self.extra_args)


TrainSettings = dataclasses.make_dataclass(
    "TrainSettings", [*_view_fields(), ("extra_args", list, dataclasses.field(default_factory=list))],
    namespace={"to_dict": _to_dict, "to_argv": _to_argv,
               "__doc__": "A round's settings: ``PANEL_FIELDS`` of ``TrainConfig`` (their names, defaults and "
                          "options), plus ``extra_args`` (more ``sslsegment train`` arguments)."})
TrainSettings.__module__ = __name__


def settings_from_round(round_info: dict) -> dict:
    """The settings a ``round.json`` recorded, as ``TrainSettings`` keywords (keys this version
    does not know are dropped)."""
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    return {k: v for k, v in round_info.get("settings", {}).items() if k in known}


def settings_changes(changes: dict) -> dict:
    """``TrainSettings`` keywords from the logic's keywords (``timeBudget``, ``extraArgs``
    accepted); an unknown name is refused, naming it. ``None`` means "not given"."""
    result = {ALIASES.get(k, k): v for k, v in changes.items() if v is not None}
    unknown = set(result) - {f.name for f in dataclasses.fields(TrainSettings)}
    if unknown:
        raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}; known: "
                         f"{', '.join([*PANEL_FIELDS, 'extra_args'])}")
    return result
