"""Is an image like the training images? Spacing and intensity statistics, to flag foreign input.

A network's softmax is confident far outside its training domain (Hendrycks & Gimpel, "A
baseline for detecting misclassified and out-of-distribution examples", ICLR 2017): spacing
written in metres gives an empty prediction at confidence 1.0, and an LA MRI through an ACDC
model scores above the in-domain cases. So the model file stores the training images' spacing
range and intensity statistics (``describe_training_domain``, written by the trainer), and
``domain_problems`` says, for a new image, what lies far outside them. Prediction reports the
problems next to the confidence and lowers the confidence of such a case (see
``inference.domain_adjusted_confidence``), so that "least confident first" shows it first.

The thresholds are wide on purpose (a factor of 3 in spacing, 4 in intensity spread): they
catch wrong units and other modalities, not ordinary scanner-to-scanner variation.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .data.geometry import Geometry

SPACING_FACTOR = 3.0
"""An axis's spacing more than this factor below the smallest or above the largest training spacing is foreign."""

INTENSITY_SPREAD_FACTOR = 4.0
"""An intensity spread (1st to 99th percentile) this factor outside the training spreads is foreign."""

MAX_CASES_READ = 24
"""Training images whose voxels are read for intensity statistics (evenly chosen); spacing uses all."""

_SUBSAMPLE = 2  # every 2nd voxel per axis: percentiles of a volume do not need every voxel


def image_statistics(array: np.ndarray, geometry: Geometry) -> dict:
    """Spacing (x, y, z, mm) and intensity percentiles (1, 50, 99) of one image."""
    sample = np.asarray(array)[::_SUBSAMPLE, ::_SUBSAMPLE, ::_SUBSAMPLE]
    p01, p50, p99 = (float(v) for v in np.percentile(sample, (1, 50, 99)))
    return {"spacing": [float(s) for s in geometry.spacing], "p01": p01, "p50": p50, "p99": p99}


def summarise(statistics: Sequence[dict], spacings: Iterable[Sequence[float]] | None = None) -> dict:
    """The training domain from per-image statistics (``spacings``: of every training image,
    when more images were measured for spacing than for intensity)."""
    spacing = np.array(list(spacings) if spacings is not None else [s["spacing"] for s in statistics], dtype=float)
    spreads = [s["p99"] - s["p01"] for s in statistics]
    medians = [s["p50"] for s in statistics]
    return {"cases": len(spacing), "spacing_min": spacing.min(axis=0).tolist(),
            "spacing_max": spacing.max(axis=0).tolist(),
            "intensity_cases": len(statistics), "p50_min": float(min(medians)), "p50_max": float(max(medians)),
            "spread_min": float(min(spreads)), "spread_max": float(max(spreads))}


def describe_training_domain(image_paths: Sequence) -> dict | None:
    """Spacing of every training image (from the header) and intensity statistics of up to
    :data:`MAX_CASES_READ` of them; None when there is no image."""
    from .data.io import read_image  # noqa: PLC0415
    from .training.data_setup import read_geometry  # noqa: PLC0415

    paths = list(image_paths)
    if not paths:
        return None
    spacings = [read_geometry(path).spacing for path in paths]
    chosen = sorted(set(np.linspace(0, len(paths) - 1, min(len(paths), MAX_CASES_READ)).round().astype(int)))
    statistics = [image_statistics(*read_image(paths[i])) for i in chosen]
    return summarise(statistics, spacings)


def domain_problems(statistics: dict, domain: dict | None) -> list[str]:
    """What about an image lies far outside the training domain (empty: nothing, or no domain
    stored: a model file written before domains were recorded)."""
    if not domain:
        return []
    problems = []
    axes = "xyz"
    for axis, value, low, high in zip(axes, statistics["spacing"], domain["spacing_min"], domain["spacing_max"]):
        if value < low / SPACING_FACTOR or value > high * SPACING_FACTOR:
            problems.append(f"spacing {axis} {value:.4g} mm is far outside the training images' "
                            f"{low:.4g}-{high:.4g} mm (wrong units, or another kind of image?)")
    spread = statistics["p99"] - statistics["p01"]
    low, high = domain["spread_min"] / INTENSITY_SPREAD_FACTOR, domain["spread_max"] * INTENSITY_SPREAD_FACTOR
    if not low <= spread <= high:
        problems.append(f"intensity spread (1st-99th percentile) {spread:.4g} is far outside the training "
                        f"images' {domain['spread_min']:.4g}-{domain['spread_max']:.4g} (another modality or scaling?)")
    margin = domain["spread_max"]
    if not domain["p50_min"] - margin <= statistics["p50"] <= domain["p50_max"] + margin:
        problems.append(f"median intensity {statistics['p50']:.4g} is far outside the training images' "
                        f"{domain['p50_min']:.4g}-{domain['p50_max']:.4g} (another modality or offset?)")
    return problems


OUTLIER_SPACING_FACTOR = 10.0
"""A training case whose spacing is this factor off the median of the cases is almost surely in other units."""


def spacing_outliers(spacings: dict[str, Sequence[float]]) -> list[str]:
    """Warnings naming each training case whose spacing (x, y, z) lies more than
    :data:`OUTLIER_SPACING_FACTOR` from the cases' median on some axis: a case in metres
    among cases in millimetres is otherwise resampled to a few voxels and trains as noise."""
    if len(spacings) < 2:
        return []
    median = np.median(np.array(list(spacings.values()), dtype=float), axis=0)
    warnings = []
    for name, spacing in spacings.items():
        ratio = np.asarray(spacing, dtype=float) / median
        if np.any(ratio > OUTLIER_SPACING_FACTOR) or np.any(ratio < 1 / OUTLIER_SPACING_FACTOR):
            warnings.append(f"case {name!r}: spacing {tuple(round(float(s), 6) for s in spacing)} mm is far from the "
                            f"other cases' median {tuple(round(float(m), 4) for m in median)} mm (spacing in metres or "
                            "micrometres?); check the image header")
    return warnings
