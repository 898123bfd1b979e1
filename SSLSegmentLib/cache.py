"""A disk cache of preprocessed cases, so that cohorts larger than memory can train.

Each case is read, normalised and resampled once (``preprocessing.preprocess``) and stored as
plain ``.npy`` arrays that training opens with ``np.load(mmap_mode="r")``: a patch read
touches only the pages it needs, so the memory of a run does not grow with the number of
cases. The foreground coordinates used for oversampling are computed once and stored too.

An entry's key is the SHA-256 of the source image's bytes, the label file's bytes, the
preprocessing plan, the class names (labels are mapped to class indices by name) and
:data:`CACHE_VERSION`: the same case under the same settings is reused across runs and
retraining rounds, and a changed file or setting gives a new entry. Every file is written
atomically and ``meta.json`` last, so a half-built entry (a crash, two processes building
the same case) is never read. Stale entries are not deleted: remove the folder to reclaim
the space.

Layout: ``<cache>/<key[:2]>/<key>/{image.npy, label.npy, foreground.npz, meta.json}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.cases import Case, load_labelled_case
from .data.io import read_image
from .data.labels import ClassInfo
from .fileio import atomic_path, atomic_write_json
from .preprocessing import Plan, preprocess

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when preprocessing or the entry layout changes: every key changes with it."""

CACHE_ENV = "SSLSEGMENT_CACHE"
CACHE_FOLDER_NAME = ".sslsegment-cache"
MAX_FOREGROUND_POINTS = 20000


def default_cache_dir(run_dir: str | os.PathLike) -> Path:
    """``$SSLSEGMENT_CACHE`` when set, else ``.sslsegment-cache`` beside the run folder (so the
    rounds of a Slicer job, ``rounds/NNN``, share one cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(run_dir).resolve().parent / CACHE_FOLDER_NAME


def case_key(image_sha256: str, label_sha256: str | None, plan: Plan, classes: list[ClassInfo],
             label_names: dict | None = None) -> str:
    """The entry of a case: its files' bytes, the plan, and for a label how its values become
    class indices (the dataset's class names, a dataset.json's value names)."""
    labelled = label_sha256 is not None
    settings = {"version": CACHE_VERSION, "image": image_sha256, "label": label_sha256, "plan": plan.to_dict(),
                "classes": [c.name for c in classes] if labelled else None,
                "label_names": {str(k): v for k, v in (label_names or {}).items()} if labelled else None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def foreground_points(label: np.ndarray, rng: np.random.Generator, limit: int = MAX_FOREGROUND_POINTS
                      ) -> dict[int, np.ndarray]:
    """Coordinates ``(n, ndim)`` of each foreground class, at most ``limit`` per class."""
    points = {}
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value)
        if len(coords) > limit:
            coords = coords[np.sort(rng.choice(len(coords), limit, replace=False))]
        points[int(value)] = coords.astype(np.int32)
    return points


@dataclass
class CachedCase:
    """A preprocessed case on disk. ``image`` / ``label`` are read-only memory maps, opened on
    first use (and not pickled: a worker process reopens them)."""

    name: str
    folder: Path
    shape: tuple[int, ...]
    labelled: bool
    _maps: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def image(self) -> np.ndarray:
        return self._map("image")

    @property
    def label(self) -> np.ndarray | None:
        return self._map("label") if self.labelled else None

    def load(self, name: str = "image") -> np.ndarray:
        """A whole array read into memory (not mapped: its pages leave with the array)."""
        return np.load(self.folder / f"{name}.npy")

    def foreground(self) -> dict[int, np.ndarray]:
        if not self.labelled:
            return {}
        with np.load(self.folder / "foreground.npz") as stored:
            return {int(key.split("_")[1]): stored[key] for key in stored.files}

    def _map(self, name: str) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return self._maps[name]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state


class PreprocessCache:
    """Get (or build, then get) the preprocessed version of a case."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.reused = 0
        self.built = 0

    def folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, case: Case, key: str) -> CachedCase | None:
        """The entry, or None when it is missing or damaged (then it is built again)."""
        folder = self.folder(key)
        if not (folder / "meta.json").exists():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            cached = CachedCase(case.name, folder, tuple(meta["shape"]), bool(meta["labelled"]))
            _check_entry(cached)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            log.warning("preprocessed-case cache entry %s of case %r is damaged (%s): building it again", folder,
                        case.name, error.__class__.__name__)
            (folder / "meta.json").unlink(missing_ok=True)
            return None
        return cached

    def get_or_build(self, case: Case, key: str, plan: Plan, classes: list[ClassInfo],
                     labelled: bool) -> CachedCase:
        cached = self.get(case, key)
        if cached is not None:
            self.reused += 1
            return cached
        self.build(case, key, plan, classes, labelled)
        self.built += 1
        return self.get(case, key)

    def build(self, case: Case, key: str, plan: Plan, classes: list[ClassInfo], labelled: bool) -> None:
        """Preprocess one case (the only moment its whole volume is in memory) and store it."""
        if labelled:
            image, label, geometry = load_labelled_case(case, classes)
        else:
            (image, geometry), label = read_image(case.image), None
        image, label, resampled = preprocess(image, geometry, plan, label)
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        _save_npy(folder / "image.npy", image.astype(np.float32, copy=False))
        if label is not None:
            dtype = np.uint8 if len(classes) < 255 else np.int16
            label = label.astype(dtype)
            _save_npy(folder / "label.npy", label)
            rng = np.random.default_rng(int(key[:8], 16))
            points = foreground_points(label, rng)
            with atomic_path(folder / "foreground.npz") as tmp:
                np.savez(tmp, **{f"class_{value}": coords for value, coords in points.items()})
        atomic_write_json(folder / "meta.json", {
            "case": case.name, "source_image": str(case.image), "source_label": str(case.label) if labelled else None,
            "shape": list(image.shape), "labelled": label is not None, "geometry": resampled.to_dict(),
            "plan": plan.to_dict(), "version": CACHE_VERSION})


def _check_entry(cached: CachedCase) -> None:
    """Open every array of an entry (headers and sizes only: cheap) and compare the shapes;
    ValueError/OSError for a truncated or overwritten file."""
    image = np.load(cached.folder / "image.npy", mmap_mode="r")
    if tuple(image.shape) != cached.shape:
        raise ValueError(f"image.npy has shape {image.shape}, meta.json says {cached.shape}")
    if cached.labelled:
        label = np.load(cached.folder / "label.npy", mmap_mode="r")
        if tuple(label.shape) != cached.shape:
            raise ValueError(f"label.npy has shape {label.shape}, meta.json says {cached.shape}")
        with np.load(cached.folder / "foreground.npz") as stored:
            for name in stored.files:
                stored[name]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array))
