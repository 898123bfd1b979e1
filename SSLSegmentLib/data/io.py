"""Reading and writing 3D images with SimpleITK, keeping the full geometry.

Supported formats: .nrrd .nhdr .nii .nii.gz .mha .mhd. Arrays are (z, y, x).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError
from ..fileio import atomic_path, check_written
from .geometry import Geometry

IMAGE_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
# Header-only formats whose voxels live in a second file that the header names.
DETACHED_EXTENSIONS = (".nhdr", ".mhd")


def has_image_extension(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read any supported file as a 3D SimpleITK image, or raise InputError naming the file.

    A 4D image whose fourth axis has length 1 (common in NIfTI exports) is squeezed to 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not has_image_extension(path):
        raise InputError(f"{path}: unsupported format (use one of {', '.join(IMAGE_EXTENSIONS)})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); copy or export it again")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        if "Unable to determine ImageIO reader" in str(error):  # ITK's words for "no reader knows these bytes"
            raise InputError(f"{path}: unreadable image: its content is not {_format_name(path)} (a damaged "
                             "file, or another kind of file with an image extension)") from None
        raise InputError(f"{path}: unreadable image ({_first_line(error)})") from error
    return _as_3d_scalar(image, path)


def _as_3d_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: vector/multi-component image ({image.GetNumberOfComponentsPerPixel()} "
                         "components); a single-channel 3D image is needed")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {image.GetDimension()}D image of size {image.GetSize()}; "
                         "a single-channel 3D image is needed")
    return image


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar image as float32 (z, y, x) with its geometry.

    InputError for a missing or unreadable file, a 4D or vector image, NaN or infinite voxels.
    """
    image = read_sitk(path)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        count = int(np.size(array) - np.isfinite(array).sum())
        raise InputError(f"{path}: {count} voxels are NaN or infinite")
    return array, Geometry.from_sitk(image)


def array_to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """SimpleITK image of a (z, y, x) array on ``geometry``."""
    array = np.asarray(array)
    if array.shape != geometry.shape_zyx:
        raise ValueError(f"Array shape {array.shape} differs from geometry shape (z, y, x) {geometry.shape_zyx}")
    return geometry.apply_to(sitk.GetImageFromArray(array))


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> None:
    """Write a (z, y, x) array with its geometry, atomically, compressed; format from the extension."""
    write_sitk(array_to_sitk(array, geometry), path)


def write_sitk(image: sitk.Image, path: str | os.PathLike) -> None:
    """Atomic SimpleITK write. Detached formats (.nhdr, .mhd) are written into a temporary
    folder under their final names, then the data file and last the header are moved in, so
    the header never names a temporary file."""
    path = Path(path)
    if not has_image_extension(path):
        raise InputError(f"{path}: unsupported output format (use one of {', '.join(IMAGE_EXTENSIONS)})")
    if str(path).lower().endswith(DETACHED_EXTENSIONS):
        _write_detached(image, path)
        return
    with atomic_path(path, verify=lambda written: verify_image_file(written, image)) as tmp:
        _sitk_write(image, tmp, path)


def _sitk_write(image: sitk.Image, where: Path, path: Path) -> None:
    """SimpleITK's write; its error (a full disk raises for some formats) names ``path``."""
    try:
        sitk.WriteImage(image, str(where), useCompression=True)
    except RuntimeError as error:
        raise OutputError(f"{path}: could not write it ({_first_line(error)}); is the disk full? Nothing was "
                          "replaced. Free space and run again") from None


def verify_image_file(path: str | os.PathLike, expected: sitk.Image | None = None) -> None:
    """Read a just-written image back in full; raise when it is unreadable or (given
    ``expected``) its voxels differ. SimpleITK's NIfTI writer does not report a full disk, and
    its reader fills a truncated ``.nii.gz`` without an error: only the voxels tell."""
    written = sitk.ReadImage(str(path))
    if expected is not None and not np.array_equal(sitk.GetArrayViewFromImage(written),
                                                   sitk.GetArrayViewFromImage(expected), equal_nan=True):
        raise OSError("the voxels read back differ from those written (truncated file)")


def _write_detached(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=path.parent))
    try:
        _sitk_write(image, staging / path.name, path)
        for written in staging.iterdir():
            check_written(written, path.parent / written.name)
        check_written(staging / path.name, path, lambda written: verify_image_file(written, image))
        data_files = [f for f in staging.iterdir() if f.name != path.name]
        for data_file in data_files:
            os.replace(data_file, path.parent / data_file.name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _format_name(path: Path) -> str:
    extension = next(e for e in sorted(IMAGE_EXTENSIONS, key=len, reverse=True) if path.name.lower().endswith(e))
    return f"a valid {extension} image"


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with file/line noise; the last line is the useful description.
    return lines[-1] if lines else type(error).__name__
