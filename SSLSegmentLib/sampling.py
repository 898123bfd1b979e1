"""Training batches: random patches (3D) or slices (2D) from preprocessed volumes.

Patches are cut by array slicing from volumes that are already normalised and resampled,
so drawing a batch costs a few memory copies and never competes with the network for the
CPU. Written by hand rather than with MONAI's ``RandCropByPosNegLabel`` because the
foreground voxel lists are computed once per case here instead of once per draw.
Labelled patches are centred on a foreground voxel of a random class a fixed share of
the time (nnU-Net's oversampling), so that rare small structures are seen.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

MAX_FOREGROUND_POINTS = 20000


def fit_patch(preset_patch: tuple[int, ...], shapes: list[tuple[int, ...]], divisor: int = 16) -> tuple[int, ...]:
    """The preset patch rounded down to a multiple of ``divisor`` (what the network's
    downsampling needs), and shrunk to the largest volume (rounded up to ``divisor``) so
    that small images are not padded far beyond their size."""
    largest = np.max(np.array(shapes), axis=0)[-len(preset_patch):]
    fitted = []
    for want, have in zip(preset_patch, largest):
        rounded = int(np.ceil(have / divisor) * divisor)
        fitted.append(max(divisor, min(int(want) // divisor * divisor, rounded)))
    return tuple(fitted)


def pad_to(array: np.ndarray, minimum: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the trailing axes of ``array`` to at least ``minimum`` (centred)."""
    pads = [(0, 0)] * (array.ndim - len(minimum))
    for size, want in zip(array.shape[-len(minimum):], minimum):
        extra = max(0, want - size)
        pads.append((extra // 2, extra - extra // 2))
    if not any(p for pair in pads for p in pair):
        return array
    return np.pad(array, pads, mode="constant")


def foreground_points(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Coordinates of each foreground class (subsampled), for oversampling."""
    points = {}
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value)
        if len(coords) > MAX_FOREGROUND_POINTS:
            coords = coords[rng.choice(len(coords), MAX_FOREGROUND_POINTS, replace=False)]
        points[int(value)] = coords
    return points


@dataclass
class Volume:
    image: np.ndarray
    label: np.ndarray | None
    foreground: dict[int, np.ndarray]


class PatchSampler:
    """Draws augmented patches from a list of volumes.

    ``dim=3``: patches of shape ``patch`` (z, y, x). ``dim=2``: an axial slice (along the
    array's first axis) cropped to ``patch`` (y, x).
    """

    def __init__(self, images, labels, patch, dim, foreground_fraction=0.33, augment=True, seed=0):
        self.patch = tuple(patch)
        self.dim = dim
        self.foreground_fraction = foreground_fraction if labels is not None else 0.0
        self.augment = augment
        rng = np.random.default_rng(seed)
        labels = labels if labels is not None else [None] * len(images)
        self.volumes = [self._prepare(img, lbl, rng) for img, lbl in zip(images, labels)]

    def _prepare(self, image, label, rng) -> Volume:
        image = pad_to(image.astype(np.float32, copy=False), self.patch)
        if label is None:
            return Volume(image, None, {})
        label = pad_to(label.astype(np.int64, copy=False), self.patch)
        return Volume(image, label, foreground_points(label, rng))

    def sample(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``count`` patches as arrays ``(count, 1, *patch)``; ``label`` only if labelled."""
        images, labels = [], []
        for _ in range(count):
            volume = self.volumes[rng.integers(len(self.volumes))]
            image, label = self._crop(volume, self._centre(volume, rng), rng)
            if self.augment:
                image, label = random_flip_rotate(image, label, rng)
            images.append(image)
            labels.append(label)
        batch = {"image": np.stack(images)[:, None]}
        if labels[0] is not None:
            batch["label"] = np.stack(labels)[:, None]
        return batch

    def _centre(self, volume: Volume, rng) -> np.ndarray | None:
        if volume.foreground and rng.random() < self.foreground_fraction:
            classes = list(volume.foreground)
            coords = volume.foreground[classes[rng.integers(len(classes))]]
            return coords[rng.integers(len(coords))]
        return None

    def _crop(self, volume: Volume, centre, rng):
        shape = volume.image.shape
        if self.dim == 2:
            z = int(centre[0]) if centre is not None else int(rng.integers(shape[0]))
            starts = self._starts(shape[1:], None if centre is None else centre[1:], rng)
            index = (z,) + tuple(slice(s, s + p) for s, p in zip(starts, self.patch))
        else:
            starts = self._starts(shape, centre, rng)
            index = tuple(slice(s, s + p) for s, p in zip(starts, self.patch))
        label = volume.label[index] if volume.label is not None else None
        return volume.image[index], label

    def _starts(self, shape, centre, rng) -> list[int]:
        starts = []
        for axis, (size, patch) in enumerate(zip(shape, self.patch)):
            high = size - patch
            if centre is None:
                starts.append(int(rng.integers(high + 1)))
            else:
                starts.append(int(np.clip(int(centre[axis]) - patch // 2, 0, high)))
        return starts


def random_flip_rotate(image: np.ndarray, label: np.ndarray | None, rng):
    """Random flips of the in-plane axes and a random in-plane quarter turn (SSL4MIS's
    ``RandomRotFlip``) when the plane is square."""
    axes = (-2, -1)
    if image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(4))
        image = np.rot90(image, k, axes=axes)
        label = np.rot90(label, k, axes=axes) if label is not None else None
    for axis in axes:
        if rng.random() < 0.5:
            image = np.flip(image, axis)
            label = np.flip(label, axis) if label is not None else None
    image = np.ascontiguousarray(image)
    label = np.ascontiguousarray(label) if label is not None else None
    return image, label


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type == "cuda"
    out = {"image": torch.from_numpy(batch["image"]).to(device, non_blocking=non_blocking)}
    if "label" in batch:
        out["label"] = torch.from_numpy(batch["label"]).to(device, non_blocking=non_blocking)
    return out


class BatchStream:
    """Endless (labelled, unlabelled) batches; a background thread prepares the next ones
    while the network works (numpy copies release the GIL)."""

    def __init__(self, labelled: PatchSampler, unlabelled: PatchSampler | None, sizes: tuple[int, int],
                 seed: int, prefetch: int = 2):
        self.labelled, self.unlabelled, self.sizes = labelled, unlabelled, sizes
        self.rng = np.random.default_rng(seed)
        self.prefetch = prefetch
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def draw(self) -> tuple[dict, dict | None]:
        labelled = self.labelled.sample(self.sizes[0], self.rng)
        unlabelled = self.unlabelled.sample(self.sizes[1], self.rng) if self.unlabelled else None
        return labelled, unlabelled

    def __iter__(self) -> Iterator[tuple[dict, dict | None]]:
        if self.prefetch <= 0:
            while True:
                yield self.draw()
        self._queue = queue.Queue(maxsize=self.prefetch)
        worker = threading.Thread(target=self._fill, daemon=True)
        worker.start()
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                item = self.draw()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # surfaced in the training thread
            self._queue.put(error)
