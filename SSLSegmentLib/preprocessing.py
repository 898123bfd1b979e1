"""Planning, intensity normalisation and resampling, following nnU-Net's rules.

nnU-Net: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
image segmentation", Nature Methods 18, 203-211 (2021).

Conventions: arrays (z, y, x); spacings and geometry tuples (x, y, z).

Resampling keeps the field of view (the box covered by the voxels, as nnU-Net and
``skimage.transform.resize`` do): the new grid has ``round(size * old / new)`` voxels and its
origin moves by half a voxel difference, so the volume stays centred; direction is kept.
``resample_to_geometry`` brings predictions back onto the original grid exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .config import TrainConfig
from .data.geometry import Geometry

ANISOTROPY_THRESHOLD = 3.0
"""nnU-Net's rule: coarsest / finest spacing above this -> slices are treated in 2D."""

DEFAULT_CT_WINDOW = (-1000.0, 1000.0)
"""Hounsfield window used by ``normalisation="ct"`` when none is given: air to dense bone."""


@dataclass
class Plan:
    """How the cases are prepared for the network.

    ``dim``: 2 (slices along z, array axis 0) or 3. ``target_spacing`` (x, y, z) in mm.
    ``normalisation``: ``"zscore"`` (per case) or ``"ct"`` (clip to ``ct_window`` in HU, then
    scale to [0, 1]). In 2D, z is not resampled (each case keeps its own slice spacing);
    ``target_spacing[2]`` only records the median for information.
    """

    dim: int
    target_spacing: tuple[float, float, float]
    normalisation: str = TrainConfig.normalisation
    ct_window: tuple[float, float] | None = None

    def __post_init__(self):
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {self.dim}")
        if self.normalisation not in ("zscore", "ct"):
            raise ValueError(f"normalisation must be 'zscore' or 'ct', got {self.normalisation!r}")
        self.target_spacing = tuple(float(s) for s in self.target_spacing)
        if self.normalisation == "ct" and self.ct_window is None:
            self.ct_window = DEFAULT_CT_WINDOW
        if self.ct_window is not None:
            self.ct_window = (float(self.ct_window[0]), float(self.ct_window[1]))
            if self.ct_window[0] >= self.ct_window[1]:
                raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")

    def to_dict(self) -> dict:
        return {"dim": self.dim, "target_spacing": list(self.target_spacing), "normalisation": self.normalisation,
                "ct_window": list(self.ct_window) if self.ct_window is not None else None}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        window = data.get("ct_window")
        return cls(int(data["dim"]), tuple(data["target_spacing"]), data.get("normalisation", "zscore"),
                   tuple(window) if window is not None else None)


def make_plan(geometries_of_labelled: Sequence[Geometry], dim: str | int = TrainConfig.dim,
              normalisation: str = TrainConfig.normalisation, ct_window: tuple[float, float] | None = None) -> Plan:
    """Target spacing = median spacing of the labelled cases (nnU-Net). ``dim="auto"`` picks 2D
    when the median spacing is anisotropic (coarsest / finest > 3), else 3D.

    2D always slices along z (array axis 0). When the coarsest axis is x or y instead, 2D
    still slices along z: reorient such volumes beforehand if 2D along another axis is wanted.
    """
    if not geometries_of_labelled:
        raise ValueError("make_plan needs the geometry of at least one labelled case")
    spacing = tuple(float(s) for s in np.median([g.spacing for g in geometries_of_labelled], axis=0))
    if dim == "auto":
        dim = 2 if anisotropy(spacing) > ANISOTROPY_THRESHOLD else 3
    return Plan(int(dim), spacing, normalisation, ct_window)


def anisotropy(spacing: Sequence[float]) -> float:
    return float(max(spacing) / min(spacing))


# --- intensities ----------------------------------------------------------------------------

def normalise(array: np.ndarray, plan: Plan) -> np.ndarray:
    """float32 intensities for the network: z-score per case (zero mean, unit variance over the
    whole image), or for CT: clip to the HU window and scale linearly to [0, 1] (the window keeps
    Hounsfield units comparable between cases, which a per-case z-score would undo)."""
    array = np.asarray(array, dtype=np.float32)
    if plan.normalisation == "ct":
        low, high = plan.ct_window
        return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)
    std = float(array.std())
    # A constant image (std 0) becomes all zeros rather than NaN.
    return ((array - float(array.mean())) / max(std, 1e-8)).astype(np.float32)


# --- resampling -----------------------------------------------------------------------------

def resampled_geometry(geometry: Geometry, spacing: Sequence[float]) -> Geometry:
    """Grid with ``spacing`` covering the same field of view as ``geometry`` (centred on it)."""
    old_spacing, new_spacing = np.array(geometry.spacing), np.array(spacing, dtype=float)
    size = np.maximum(1, np.round(np.array(geometry.size) * old_spacing / new_spacing)).astype(int)
    # Keep the centre of the field of view: shift the first voxel centre along each axis.
    first_centre_shift = ((size - 1) * new_spacing - (np.array(geometry.size) - 1) * old_spacing) / 2
    origin = np.array(geometry.origin) - geometry.direction_matrix @ first_centre_shift
    return Geometry(tuple(new_spacing), tuple(origin), geometry.direction, tuple(size))


def resample_image(array: np.ndarray, geometry: Geometry, spacing: Sequence[float],
                   is_label: bool = False) -> tuple[np.ndarray, Geometry]:
    """Resample a (z, y, x) array to ``spacing`` (x, y, z): linear for images, nearest for labels."""
    target = resampled_geometry(geometry, spacing)
    if target.size == geometry.size and np.allclose(target.spacing, geometry.spacing, rtol=1e-6):
        return np.asarray(array).copy(), geometry
    return _resample_volume(np.asarray(array), geometry, target, is_label), target


def resample_to_geometry(array_or_probabilities: np.ndarray, from_geometry: Geometry, to_geometry: Geometry,
                         is_label: bool) -> np.ndarray:
    """Resample onto ``to_geometry`` (size, origin, spacing and direction exactly). A 4D input
    (C, z, y, x) is a stack of probability maps, resampled channel by channel (linear)."""
    array = np.asarray(array_or_probabilities)
    if array.ndim == 4:
        return np.stack([_resample_volume(channel, from_geometry, to_geometry, is_label) for channel in array])
    return _resample_volume(array, from_geometry, to_geometry, is_label)


def _resample_volume(array: np.ndarray, from_geometry: Geometry, to_geometry: Geometry, is_label: bool) -> np.ndarray:
    if array.shape != from_geometry.shape_zyx:
        raise ValueError(f"Array shape {array.shape} differs from geometry shape {from_geometry.shape_zyx}")
    source = from_geometry.apply_to(sitk.GetImageFromArray(array if is_label else array.astype(np.float32)))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(to_geometry.size)
    resampler.SetOutputSpacing(to_geometry.spacing)
    resampler.SetOutputOrigin(to_geometry.origin)
    resampler.SetOutputDirection(to_geometry.direction)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    # Rounding of the grid size can leave edge voxels just outside the source: copy the nearest
    # voxel there instead of a constant (which would darken edges or erase labels).
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(source))


def target_spacing_for(geometry: Geometry, plan: Plan) -> tuple[float, float, float]:
    """Spacing a case is resampled to: the plan's, except z in 2D (kept, as nnU-Net's 2D does)."""
    if plan.dim == 2:
        return (plan.target_spacing[0], plan.target_spacing[1], geometry.spacing[2])
    return plan.target_spacing


def preprocess(image: np.ndarray, geometry: Geometry, plan: Plan, label: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Normalise then resample (nnU-Net's order) an image and optionally its label."""
    spacing = target_spacing_for(geometry, plan)
    image_out, new_geometry = resample_image(normalise(image, plan), geometry, spacing, is_label=False)
    label_out = None
    if label is not None:
        label_out, _ = resample_image(label, geometry, spacing, is_label=True)
    return image_out.astype(np.float32, copy=False), label_out, new_geometry
