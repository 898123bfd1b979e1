"""Synthetic organ-like 3D volumes with labels, for demos and tests (no real data needed).

Each phantom has an "organ" (an ellipsoid with a smooth random deformation, random position,
size and orientation) containing a darker "lesion". The image model mimics MR acquisition:
partial-volume blur (Gaussian), a smooth multiplicative bias field (Sled et al., "A
nonparametric method for automatic correction of intensity nonuniformity in MRI data", IEEE TMI
1998) and Rician noise (Gudbjartsson & Patz, "The Rician distribution of noisy MRI data", MRM
1995). Everything is deterministic given the seed.

``appearance_shift`` makes a task where unlabelled scans matter (the demo's): the labelled
cases keep the standard appearance, while the unlabelled and held-out ones come from
"other scanners" (lower organ contrast, a brighter lesion, more noise and blur, a stronger
bias field), a domain shift that the labels never show but the unlabelled pool does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from .data.geometry import Geometry
from .data.io import write_image
from .data.labels import ClassInfo, write_labelmap, write_segmentation

PHANTOM_CLASSES: list[ClassInfo] = [
    ClassInfo("organ", (0.85, 0.55, 0.45)),
    ClassInfo("lesion", (0.95, 0.85, 0.30)),
]
PHANTOM_SPACING = (1.0, 1.0, 1.5)
"""(x, y, z) spacing of the written phantom datasets: anisotropic, as clinical scans are."""
PHANTOM_ORIGIN = (-24.0, -30.5, 12.25)

_SCALE = 1000.0  # scanner-like intensity range


@dataclass(frozen=True)
class Appearance:
    """How a scanner renders the tissues: intensities (0..1), noise sigma, point spread (mm),
    bias-field strength (the amplitude of its log-polynomial coefficients)."""

    background: float = 0.2
    organ: float = 0.75
    lesion: float = 0.35
    noise: float = 0.05
    blur_mm: float = 0.8
    bias: float = 0.08


STANDARD = Appearance()


def shifted_appearance(strength: float) -> Appearance:
    """The standard appearance moved ``strength`` (0..1) of the way to a hard "other scanner":
    organ/background contrast down by half, the lesion as bright as the organ is dark, noise
    times 3, blur times 2, bias field times 2.5."""
    t = float(np.clip(strength, 0.0, 1.0))
    return Appearance(background=0.2 + 0.1 * t, organ=0.75 - 0.2 * t, lesion=0.35 + 0.05 * t,
                      noise=0.05 * (1 + 2 * t), blur_mm=0.8 * (1 + t), bias=0.08 * (1 + 1.5 * t))


def make_phantom(shape: Sequence[int] = (32, 48, 48), spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 seed: int | Sequence[int] = 0, appearance: Appearance = STANDARD) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: image (float32) and label (uint8: 0 background, 1 organ, 2 lesion), both
    (z, y, x) of ``shape``. ``spacing`` is (x, y, z) in mm, so shapes stay round in mm."""
    rng = np.random.default_rng(seed)
    coordinates = _centred_coordinates_mm(shape, spacing)
    organ_frame = _organ_frame(rng, coordinates, shape, spacing)
    organ = _deformed_ball(organ_frame, rng, amplitude=0.12)
    lesion_frame = _lesion_frame(organ_frame, rng)
    lesion = _deformed_ball(lesion_frame, rng, amplitude=0.08) & organ
    label = organ.astype(np.uint8)
    label[lesion] = 2
    return _acquire(label, rng, spacing, appearance), label


def _centred_coordinates_mm(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """(3, z, y, x) physical coordinates (x, y, z order on axis 0), zero at the volume centre."""
    spacing_zyx = tuple(reversed(spacing))
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.stack([x, y, z])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation (QR of a Gaussian matrix with the sign fix of Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _organ_frame(rng, coordinates, shape, spacing) -> np.ndarray:
    """Coordinates in the organ's frame, scaled so that the undeformed organ is the unit ball."""
    extent_xyz = np.array(list(reversed(shape))) * np.array(spacing)
    half = extent_xyz.min() / 2
    centre = rng.uniform(-0.08, 0.08, size=3) * extent_xyz
    radii = half * rng.uniform(0.6, 0.85, size=3)
    rotation = _random_rotation(rng)
    local = np.tensordot(rotation.T, coordinates - centre[:, None, None, None], axes=1)
    return local / radii[:, None, None, None]


def _lesion_frame(organ_frame: np.ndarray, rng) -> np.ndarray:
    """Lesion coordinates: a smaller ellipsoid off the organ centre, still well inside it."""
    direction = rng.normal(size=3)
    centre = 0.3 * direction / np.linalg.norm(direction)
    radii = rng.uniform(0.35, 0.55, size=3)
    return (organ_frame - centre[:, None, None, None]) / radii[:, None, None, None]


def _deformed_ball(frame: np.ndarray, rng, amplitude: float, waves: int = 4) -> np.ndarray:
    """Inside of the unit ball whose surface is pushed by a few random low-frequency waves."""
    radius = np.sqrt((frame ** 2).sum(axis=0))
    deformation = np.zeros_like(radius)
    for _ in range(waves):
        frequency = rng.normal(size=3)
        frequency *= rng.uniform(0.4, 1.1) / np.linalg.norm(frequency)
        phase = rng.uniform(0, 2 * np.pi)
        deformation += np.cos(2 * np.pi * np.tensordot(frequency, frame, axes=1) + phase)
    return radius + amplitude * deformation < 1.0


def _acquire(label: np.ndarray, rng, spacing: Sequence[float], look: Appearance) -> np.ndarray:
    """Image of a label map: tissue intensities, blur, bias field, Rician noise."""
    tissue = np.choose(label, [look.background, look.organ, look.lesion])
    sigma_voxels = look.blur_mm / np.array(list(reversed(spacing)))
    image = gaussian_filter(tissue.astype(np.float32), sigma_voxels) * _bias_field(label.shape, rng, look.bias)
    noise_real, noise_imaginary = rng.normal(0, look.noise, size=(2,) + label.shape)
    image = np.sqrt((image + noise_real) ** 2 + noise_imaginary ** 2)
    return (image * _SCALE).astype(np.float32)


def _bias_field(shape: Sequence[int], rng, amplitude: float = 0.08) -> np.ndarray:
    """Smooth multiplicative field, exp of a random quadratic polynomial (about +-20 % at
    the standard amplitude)."""
    axes = [np.linspace(-1, 1, n) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * y, y * z, x * z, x ** 2, y ** 2, z ** 2]
    log_field = sum(c * t for c, t in zip(rng.uniform(-amplitude, amplitude, size=len(terms)), terms))
    return np.exp(log_field).astype(np.float32)


# --- datasets on disk -----------------------------------------------------------------------

def phantom_geometry(shape: Sequence[int]) -> Geometry:
    return Geometry.from_array_shape(shape, PHANTOM_SPACING, PHANTOM_ORIGIN)


def write_phantom_dataset(root: str | Path, n_labelled: int = 4, n_unlabelled: int = 8, n_test: int = 2,
                          shape: Sequence[int] = (32, 48, 48), seed: int = 0,
                          label_format: str = "seg.nrrd", appearance_shift: float = 0.0) -> dict[str, Path]:
    """Write a phantom dataset as NRRD files with spacing ``PHANTOM_SPACING`` and origin
    ``PHANTOM_ORIGIN``; returns the folders ``{"root", "images", "labels", "test_images",
    "test_labels"}``. ``images`` holds labelled ``case_###`` then unlabelled cases; ``labels`` the
    labels of the labelled ones; ``test/images`` and ``test/labels`` held-out cases.
    ``label_format``: "seg.nrrd" (Slicer segmentation with class names) or an image extension
    ("nrrd", "nii.gz", ...) for a plain labelmap (1 organ, 2 lesion). ``appearance_shift``
    (0..1): unlabelled and test cases get :func:`shifted_appearance` with a strength drawn
    uniformly in ``[0, appearance_shift]``; the labelled ones keep the standard look."""
    root = Path(root)
    folders = {"root": root, "images": root / "images", "labels": root / "labels",
               "test_images": root / "test" / "images", "test_labels": root / "test" / "labels"}
    geometry = phantom_geometry(shape)
    def look(group: int, index: int) -> Appearance:
        if appearance_shift <= 0 or (group == 0 and index < n_labelled):
            return STANDARD
        return shifted_appearance(np.random.default_rng([seed, 2 + group, index]).uniform(0, appearance_shift))

    for index in range(n_labelled + n_unlabelled):
        image, label = make_phantom(shape, PHANTOM_SPACING, seed=[seed, 0, index], appearance=look(0, index))
        write_image(folders["images"] / f"case_{index:03d}.nrrd", image, geometry)
        if index < n_labelled:
            _write_label(folders["labels"] / f"case_{index:03d}.{label_format}", label, geometry)
    for index in range(n_test):
        image, label = make_phantom(shape, PHANTOM_SPACING, seed=[seed, 1, index], appearance=look(1, index))
        write_image(folders["test_images"] / f"test_{index:03d}.nrrd", image, geometry)
        _write_label(folders["test_labels"] / f"test_{index:03d}.{label_format}", label, geometry)
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _write_label(path: Path, label: np.ndarray, geometry: Geometry) -> None:
    if path.name.endswith(".seg.nrrd"):
        write_segmentation(path, label, geometry, PHANTOM_CLASSES)
    else:
        write_labelmap(path, label, geometry)
