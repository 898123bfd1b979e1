"""Image geometry (voxel grid in physical space) as a small immutable value.

Tuples are in ITK (x, y, z) order, as SimpleITK reports them; numpy arrays are (z, y, x).
Physical space is LPS, the DICOM / ITK convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """Voxel grid: spacing (mm), origin (mm, centre of the first voxel), direction cosines
    (3x3 row-major, column i is the direction of axis i) and size (voxels), all (x, y, z)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    size: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self):
        # Normalise to plain Python numbers so equality, hashing and JSON behave.
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.size) != 3 or len(self.direction) != 9:
            raise ValueError(f"Geometry must be 3D, got {self}")

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        return cls(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetSize())

    @classmethod
    def from_array_shape(cls, shape_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                         direction=IDENTITY_DIRECTION) -> Geometry:
        """Geometry of a (z, y, x) array, spacing/origin/direction in (x, y, z)."""
        return cls(spacing, origin, direction, tuple(reversed(shape_zyx)))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape of the numpy array holding this grid."""
        return tuple(reversed(self.size))

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=float).reshape(3, 3)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set spacing, origin and direction on ``image`` (in place, also returned)."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"Image size {image.GetSize()} differs from the geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k) = (x, y, z) to physical LPS coordinates."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.array(self.spacing)[np.newaxis, :]
        matrix[:3, 3] = self.origin
        return matrix

    @classmethod
    def from_ijk_to_lps(cls, matrix, size_xyz) -> Geometry:
        """Inverse of :meth:`ijk_to_lps` (column norms are the spacing)."""
        matrix = np.asarray(matrix, dtype=float)
        axes = matrix[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        direction = axes / spacing[np.newaxis, :]
        return cls(tuple(spacing), tuple(matrix[:3, 3]), tuple(direction.ravel()), tuple(size_xyz))

    def physical_extent(self) -> tuple[float, float, float]:
        """Field of view in mm along each axis (voxel count times spacing)."""
        return tuple(n * s for n, s in zip(self.size, self.spacing))

    def matches(self, other: Geometry, tol: float = 1e-3) -> bool:
        """Same grid up to rounding: exact size; spacing within ``tol`` relative; origin within
        ``tol`` relative to its magnitude or to the largest spacing (so an origin near zero is
        compared against the voxel size, not against zero); direction cosines within ``tol``."""
        return not self.differences(other, tol)

    def differences(self, other: Geometry, tol: float = 1e-3) -> list[str]:
        """Human-readable list of what differs beyond ``tol`` (empty when they match)."""
        problems = []
        if self.size != other.size:
            problems.append(f"size {self.size} vs {other.size}")
        a_sp, b_sp = np.array(self.spacing), np.array(other.spacing)
        if np.any(np.abs(a_sp - b_sp) > tol * np.maximum(np.abs(a_sp), np.abs(b_sp))):
            problems.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}")
        a_o, b_o = np.array(self.origin), np.array(other.origin)
        scale = np.maximum(np.maximum(np.abs(a_o), np.abs(b_o)), max(a_sp.max(), b_sp.max()))
        if np.any(np.abs(a_o - b_o) > tol * scale):
            problems.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}")
        if np.any(np.abs(np.array(self.direction) - np.array(other.direction)) > tol):
            problems.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return problems

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction), "size": list(self.size)}

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(data["spacing"], data["origin"], data.get("direction", IDENTITY_DIRECTION), data["size"])


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
