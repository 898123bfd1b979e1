"""A compact copy of the label-efficiency data, for a machine that cannot reach ``../shared/data``.

Only the repository travels to the GPU machine (64 MiB with the carried folders, wheels
included), and the data sets are about 190 MB. The bench trains on copies resampled to the CPU
preset's spacing anyway (ACDC 3 mm in-plane, LA 2 mm isotropic), which are some 4 and 30 times
smaller, so the pack holds:

- every training case resampled to the preset spacing, exactly as ``label_efficiency.py``'s
  ``resample_copy`` makes it (linear for images, nearest for labels), the image rounded to
  the source's integer type (ACDC int16 0..1000, LA uint8: a rounding of at most half a grey
  level, far below the z-score normalisation's scale);
- the evaluation cases (ACDC/val, LA's last 16) with their labels at the ORIGINAL resolution
  (Dice and HD95 stay measured on the original grids) and their images at the preset spacing.

``unpack`` rebuilds a folder laid out like ``../shared/data`` (``--data`` of the bench): the
training copies as they are (the bench's resampling to the same spacing is then the
identity) and each evaluation image interpolated back onto its label's original grid, so
``predict`` resamples it to the preset spacing and its probabilities back as with the
original image. What differs from the CPU tables: the evaluation image the network sees is the
preset-spacing image interpolated twice (original grid and back), and intensities are
rounded; the CPU and GPU tables are therefore separate tables, each with its own baselines.

    python bench/data_pack.py build --data ../shared/data --out bench/pack      # here, ~1 min
    python bench/data_pack.py unpack --pack bench/pack --out /tmp/data          # there, seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import SimpleITK as sitk  # noqa: E402

from SSLSegmentLib.data.io import array_to_sitk, read_image, read_sitk  # noqa: E402
from SSLSegmentLib.data.geometry import Geometry  # noqa: E402
from SSLSegmentLib.data.labels import read_label, write_labelmap  # noqa: E402
from SSLSegmentLib.fileio import atomic_write_json  # noqa: E402
from SSLSegmentLib.preprocessing import resample_image, resample_to_geometry  # noqa: E402

ARCHIVE = "data.tar.xz"
"""One xz-compressed tar of uncompressed NRRD images: a single file that travels (xz packs the
images a quarter smaller than NRRD's own gzip)."""
LA_EVAL = 16
"""The bench's LA evaluation cases: the last 16 of ``LA/train`` in sorted order."""


def acdc_spacing(millimetres: float):
    return lambda geometry: (millimetres, millimetres, geometry.spacing[2])  # z kept: 2D slices


def la_spacing(millimetres: float):
    return lambda geometry: (millimetres,) * 3


def pack_case(source: Path, target: Path, name: str, spacing_of, keep_label: bool, dtype) -> None:
    """One case: the image at the preset spacing (rounded to ``dtype``), the label either at the
    preset spacing too (training) or copied as it is (evaluation)."""
    array, geometry = read_image(source / "images" / name)
    array, resampled = resample_image(array, geometry, spacing_of(geometry))
    info = np.iinfo(dtype)
    write_raw(target / "images" / name, np.clip(np.rint(array), info.min, info.max).astype(dtype), resampled)
    (target / "labels").mkdir(parents=True, exist_ok=True)
    if keep_label:
        shutil.copyfile(source / "labels" / name, target / "labels" / name)
        return
    label = read_label(source / "labels" / name)
    labels, label_geometry = resample_image(label.array, label.geometry, spacing_of(label.geometry), is_label=True)
    write_labelmap(target / "labels" / name, labels.astype("uint8"), label_geometry)


def build(data: Path, out: Path, acdc_mm: float, la_mm: float, jobs: int) -> dict:
    staging = out / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    work = []  # (source folder, target folder, name, spacing, keep the original label, dtype)
    acdc = data / "ACDC"
    for split, keep in (("train", False), ("val", True)):
        for image in sorted((acdc / split / "images").glob("*.nrrd")):
            work.append((acdc / split, staging / "ACDC" / split, image.name, acdc_spacing(acdc_mm), keep, np.int16))
    la_names = sorted(p.name for p in (data / "LA" / "train" / "images").glob("*.nrrd"))
    for index, name in enumerate(la_names):
        keep = index >= len(la_names) - LA_EVAL
        work.append((data / "LA" / "train", staging / "LA" / "train", name, la_spacing(la_mm), keep, np.uint8))
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(lambda w: pack_case(*w), work))
    manifest = {"acdc_spacing_mm": acdc_mm, "la_spacing_mm": la_mm, "la_eval_cases": LA_EVAL,
                "evaluation_images_at_preset_spacing": [f"ACDC/val/images/{w[2]}" for w in work if w[4] and "ACDC" in str(w[1])]
                + [f"LA/train/images/{w[2]}" for w in work if w[4] and "LA" in str(w[1])],
                "cases": len(work)}
    atomic_write_json(staging / "manifest.json", manifest)
    archive, partial = out / ARCHIVE, out / (ARCHIVE + ".tmp")
    with tarfile.open(partial, "w:xz", preset=9) as tar:
        tar.add(staging, arcname="data")
    partial.replace(archive)
    shutil.rmtree(staging)
    return {"archive": str(archive), "bytes": archive.stat().st_size, **manifest}


def upsample_onto_label(image_path: Path, label_path: Path) -> None:
    """Interpolate a preset-spacing evaluation image onto its label's original grid (in place,
    in the image's own integer type)."""
    image = read_sitk(image_path)
    dtype = sitk.GetArrayViewFromImage(image).dtype
    array, geometry = read_image(image_path)
    original = Geometry.from_sitk(read_sitk(label_path))
    info = np.iinfo(dtype)
    upsampled = resample_to_geometry(array, geometry, original, is_label=False)
    write_raw(image_path, np.clip(np.rint(upsampled), info.min, info.max).astype(dtype), original)


def write_raw(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """An uncompressed NRRD (the archive compresses); read back by any reader of the bench."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(array_to_sitk(array, geometry), str(path), useCompression=False)


def unpack(pack: Path, out: Path, jobs: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack / ARCHIVE) as tar:
        tar.extractall(out, filter="data")
    root = out / "data"
    manifest = json.loads((root / "manifest.json").read_text())
    todo = [root / p for p in manifest["evaluation_images_at_preset_spacing"]]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(lambda p: upsample_onto_label(p, p.parent.parent / "labels" / p.name), todo))
    return {"data": str(root), "evaluation_images_upsampled": len(todo), **manifest}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the pack (here, where ../shared/data is)")
    b.add_argument("--data", type=Path, default=(ROOT / ".." / "shared" / "data").resolve())
    b.add_argument("--out", type=Path, default=ROOT / "bench" / "pack")
    b.add_argument("--acdc-spacing", type=float, default=3.0)
    b.add_argument("--la-spacing", type=float, default=2.0)
    b.add_argument("--jobs", type=int, default=2)
    u = sub.add_parser("unpack", help="rebuild a ../shared/data-like folder from the pack")
    u.add_argument("--pack", type=Path, default=ROOT / "bench" / "pack")
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--jobs", type=int, default=8)
    args = p.parse_args(argv)
    if args.command == "build":
        result = build(args.data.resolve(), args.out, args.acdc_spacing, args.la_spacing, args.jobs)
    else:
        result = unpack(args.pack, args.out, args.jobs)
    print(json.dumps({k: v for k, v in result.items() if k != "evaluation_images_at_preset_spacing"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
