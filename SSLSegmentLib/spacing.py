"""The spacing the network trains at (``--spacing``), chosen by the preset unless given.

nnU-Net trains at the median spacing of the data. On a CPU that is often far finer than a
small patch can use: a 64-voxel patch of a 0.625 mm LA scan sees 40 mm of a 114 mm heart,
and each step costs as much as at any spacing. The CPU preset therefore coarsens the grid
until the median case fits the preset patch (the label-efficiency bench measured its CPU
figures this way: ACDC at 3 mm in-plane, LA at 2 mm isotropic), never finer than the data.
Predictions are made at that spacing and resampled back onto each image's own grid
(``inference.predict_image``), so what a user gets is always on the image's grid.

Rules (``TrainConfig.spacing``):

- ``"data"``: the median spacing of the labelled cases (nnU-Net);
- ``"fit"``: the coarsest of the median spacing and ``median extent / patch``: in 3D one
  isotropic value (the axis that needs the most coarsening sets it; an axis whose data are
  coarser keeps its own spacing); in 2D the same in-plane, each case keeping its slices;
- numbers: ``(x, y, z)`` in mm, or one number: isotropic in 3D, in-plane in 2D.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .data.geometry import Geometry
from .errors import InputError

DATA, FIT = "data", "fit"
RULES = (DATA, FIT)


def parse_spacing(text: str | float | Sequence[float] | None):
    """``None``, ``"data"``, ``"fit"``, one positive number or three (x, y, z); the CLI's text
    (``"2"``, ``"1.5,1.5,3"``) or Python values. Raises :class:`InputError` otherwise."""
    if text is None or (isinstance(text, str) and text in RULES):
        return text
    values = text
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.replace("x", ",").split(",")]
        except ValueError:
            raise InputError(f"spacing {text!r}: give 'data', 'fit', one number (mm) or three (x,y,z)") from None
    values = [float(values)] if np.isscalar(values) else [float(v) for v in values]
    if len(values) not in (1, 3) or not all(v > 0 and np.isfinite(v) for v in values):
        raise InputError(f"spacing {text!r}: give one positive number (mm) or three (x,y,z)")
    return values[0] if len(values) == 1 else tuple(values)


def training_spacing(rule, geometries: Sequence[Geometry], dim: int, patch_zyx: Sequence[int],
                     median: Sequence[float]) -> tuple[float, float, float]:
    """The (x, y, z) spacing a plan trains at, from ``rule`` (see the module docstring);
    ``median`` is the data's median spacing (the plan's), ``patch_zyx`` the patch in array
    order ((y, x) in 2D)."""
    rule = parse_spacing(rule)
    median = tuple(float(s) for s in median)
    if rule is None or rule == DATA:
        return median
    if rule == FIT:
        return _fit(geometries, dim, patch_zyx, median)
    if isinstance(rule, float):
        return (rule, rule, median[2] if dim == 2 else rule)
    return tuple(rule)


def _fit(geometries, dim, patch_zyx, median) -> tuple[float, float, float]:
    extent = np.median([g.physical_extent() for g in geometries], axis=0)  # x, y, z in mm
    patch_xyz = list(reversed([int(p) for p in patch_zyx]))
    axes = 2 if dim == 2 else 3
    needed = max(extent[i] / patch_xyz[i] for i in range(axes))
    spacing = [float(round(max(median[i], needed), 3)) for i in range(axes)]
    return tuple(spacing) + ((median[2],) if dim == 2 else ())
