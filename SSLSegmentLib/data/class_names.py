"""Class names across cases: one class per name, whatever its spelling, present in every case.

A class is its name (two cases may number the same structure differently), so names are
compared after trimming spaces and folding case: ``RV``, ``rv`` and ``Myo `` are the
classes ``RV`` and ``Myo`` (spelled as they first appear). A class missing from some
labelled cases is a mistake that trains silently wrong (its voxels count as background
there), so it is refused for named classes (Slicer segmentations, where an empty segment of
that name says "absent in this case"), and reported as a warning for the generated
``label_<value>`` names of plain labelmaps, where an absent value may be a structure that
this case lacks.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..errors import InputError

GENERATED_NAME = re.compile(r"^label_(\d+)$")


def class_key(name: str) -> str:
    """What identifies a class: its name trimmed and case-folded."""
    return str(name).strip().casefold()


def display_name(name: str) -> str:
    return str(name).strip()


def missing_by_class(names_per_case: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Class (first spelling) -> the cases whose label lacks it, for classes some case lacks."""
    spelling: dict[str, str] = {}
    present: dict[str, set[str]] = {}
    for case, names in names_per_case.items():
        for name in names:
            key = class_key(name)
            spelling.setdefault(key, display_name(name))
            present.setdefault(key, set()).add(case)
    cases = list(names_per_case)
    return {spelling[key]: [c for c in cases if c not in where]
            for key, where in present.items() if len(where) < len(cases)}


def describe_missing(missing: Mapping[str, Sequence[str]], total: int, limit: int = 5) -> str:
    parts = []
    for name, cases in missing.items():
        shown = ", ".join(cases[:limit]) + (f" and {len(cases) - limit} more" if len(cases) > limit else "")
        parts.append(f"{name!r} is missing from {len(cases)} of {total} labelled cases ({shown})")
    return "; ".join(parts)


def check_classes_in_every_case(names_per_case: Mapping[str, Sequence[str]]) -> list[str]:
    """Refuse named classes missing from some labelled cases; warnings for ``label_<v>``.

    ``names_per_case``: case -> the class names its label declares. Returns the warnings.
    """
    missing = missing_by_class(names_per_case)
    named = {n: c for n, c in missing.items() if not GENERATED_NAME.match(n)}
    generated = {n: c for n, c in missing.items() if GENERATED_NAME.match(n)}
    total = len(names_per_case)
    if named:
        raise InputError(
            f"Class names differ between the labelled cases: {describe_missing(named, total)}. Its voxels would "
            "count as background there. Rename the segments so that each structure has one name in every case "
            "(spaces and upper/lower case do not matter), or add an empty segment of that name where the "
            "structure is truly absent")
    if generated:
        return [f"label value(s) present in only some labelled cases: {describe_missing(generated, total)}; "
                "check that these cases are labelled alike (a stray value makes a class of its own)"]
    return []


def check_every_class_drawn(classes: Sequence[str], label_files: Sequence) -> None:
    """Refuse classes that no label file shows a voxel of (Slicer: empty segments in every
    case), naming them; ``label_files`` are ``.seg.nrrd`` or labelmap paths."""
    import numpy as np  # noqa: PLC0415

    from .labels import read_label  # noqa: PLC0415

    drawn: set[str] = set()
    for path in label_files:
        label = read_label(path)
        values = set(np.unique(label.array).tolist())
        drawn.update(class_key(info.name) for value, info in label.segments.items() if value in values)
    empty = [name for name in classes if class_key(name) not in drawn]
    if empty:
        raise InputError(f"Class(es) {', '.join(map(repr, empty))} have no voxel in any labelled case: draw them in "
                         "at least one case, or delete the empty segments")
