"""Helpers for tests that run the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY_TRAIN = ("--size", "tiny", "--device", "cpu", "--patch-size", "16,32,32", "--dim", "3")


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m SSLSegmentLib ...`` in a real child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "SSLSegmentLib", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def write_volume(path: Path, array, spacing=(1.0, 1.0, 1.5)) -> None:
    """Write ``array`` (z, y, x) as an image file with ``spacing`` (x, y, z), creating its folder."""
    import SimpleITK as sitk  # noqa: PLC0415  (the CLI helper above needs no imaging library)

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_two_labelled_cases(root: Path) -> Path:
    """``root/images`` and ``root/labels``: two small cases of plain labelmaps, one class."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for name in ("alpha", "beta"):
        write_volume(root / "images" / f"{name}.nrrd", rng.normal(size=(8, 16, 16)).astype(np.float32))
        label = np.zeros((8, 16, 16), np.uint8)
        label[2:6, 4:12, 4:12] = 1
        write_volume(root / "labels" / f"{name}.nrrd", label)
    return root


def train_in_process(root: Path, capsys, *extra: str):
    """``sslsegment train`` (one tiny iteration) on ``root``'s images and labels, in this process:
    (exit code, stderr, run folder)."""
    from SSLSegmentLib.cli import main  # noqa: PLC0415

    out = root / "run"
    code = main(["train", "--images", str(root / "images"), "--labels", str(root / "labels"), "--out", str(out),
                 "--iterations", "1", "--size", "tiny", "--device", "cpu", *extra])
    return code, capsys.readouterr().err, out
