"""Training batches: random patches (3D) or slices (2D) from preprocessed volumes.

Patches are cut by array slicing from volumes that are already normalised and resampled,
so drawing a batch costs a few memory copies and never competes with the network for the
CPU. Written by hand rather than with MONAI's ``RandCropByPosNegLabel`` because the
foreground voxel lists are computed once per case here instead of once per draw.
Labelled patches are centred on a foreground voxel of a random class a fixed share of
the time (nnU-Net's oversampling), so that rare small structures are seen.
"""

from __future__ import annotations

import mmap
import queue
import threading
from typing import Iterator

import numpy as np
import torch

from .cache import MAX_FOREGROUND_POINTS
from .config import TrainConfig
from .cache import foreground_points as cached_foreground_points


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
    return cached_foreground_points(np.asarray(label), rng, MAX_FOREGROUND_POINTS)


class Volume:
    """One volume to sample from: arrays in memory, or read-only memory maps of a
    :class:`~SSLSegmentLib.cache.CachedCase` (opened lazily, so a sampler pickles cheaply
    into worker processes). Volumes smaller than the patch are padded per patch, never as
    a whole, so a memory-mapped volume is never loaded entirely."""

    def __init__(self, image, label=None, foreground: dict[int, np.ndarray] | None = None, source=None):
        self._image, self._label, self.source = image, label, source
        self.foreground = foreground if foreground is not None else {}
        self.shape = tuple(source.shape if source is not None else image.shape)

    @classmethod
    def from_cache(cls, case) -> "Volume":
        return cls(None, None, case.foreground(), source=case)

    @property
    def image(self) -> np.ndarray:
        return self.source.image if self.source is not None else self._image

    @property
    def label(self) -> np.ndarray | None:
        return self.source.label if self.source is not None else self._label

    @property
    def labelled(self) -> bool:
        return self.source.labelled if self.source is not None else self._label is not None


class PatchSampler:
    """Draws augmented patches from a list of volumes.

    ``dim=3``: patches of shape ``patch`` (z, y, x). ``dim=2``: an axial slice (along the
    array's first axis) cropped to ``patch`` (y, x). ``images`` / ``labels`` are arrays;
    :meth:`from_cache` samples from memory-mapped cached cases instead.
    """

    def __init__(self, images, labels, patch, dim, foreground_fraction=TrainConfig.foreground_fraction, augment=True, seed=0, volumes=None):
        self.patch = tuple(patch)
        self.dim = dim
        self.augment = augment
        if volumes is None:
            rng = np.random.default_rng(seed)
            labels = labels if labels is not None else [None] * len(images)
            volumes = [self._in_memory(img, lbl, rng) for img, lbl in zip(images, labels)]
        self.volumes = volumes
        self.foreground_fraction = foreground_fraction if any(v.labelled for v in volumes) else 0.0

    @classmethod
    def from_cache(cls, cases, patch, dim, foreground_fraction=TrainConfig.foreground_fraction, augment=True, labelled=True) -> "PatchSampler":
        volumes = [Volume.from_cache(c) if labelled else Volume(None, None, {}, source=_Unlabelled(c)) for c in cases]
        return cls(None, None, patch, dim, foreground_fraction, augment, volumes=volumes)

    @staticmethod
    def _in_memory(image, label, rng) -> Volume:
        image = np.asarray(image, dtype=np.float32)
        if label is None:
            return Volume(image)
        return Volume(image, np.asarray(label), foreground_points(label, rng))

    def sample(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``count`` patches as arrays ``(count, 1, *patch)``; ``label`` (int64) only if labelled."""
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
            batch["label"] = np.stack(labels)[:, None].astype(np.int64)
        return batch

    def _centre(self, volume: Volume, rng) -> np.ndarray | None:
        if volume.foreground and rng.random() < self.foreground_fraction:
            classes = list(volume.foreground)
            coords = volume.foreground[classes[rng.integers(len(classes))]]
            return coords[rng.integers(len(coords))]
        return None

    def _crop(self, volume: Volume, centre, rng):
        """Cut the patch from the volume as if it were zero-padded (centred) to the patch."""
        shape = volume.shape
        if self.dim == 2:
            z = int(centre[0]) if centre is not None else int(rng.integers(shape[0]))
            window = self._window(shape[1:], None if centre is None else centre[1:], rng)
            lead = (z,)
        else:
            window = self._window(shape, centre, rng)
            lead = ()
        image = read_window(volume.image, lead, window, np.float32)
        label = read_window(volume.label, lead, window, np.int64) if volume.labelled else None
        return image, label

    def _window(self, shape, centre, rng) -> list[tuple[int, int]]:
        """Per axis ``(start, stop)`` in the volume's own coordinates; may reach outside it
        (by at most the centred padding) when the volume is smaller than the patch."""
        window = []
        for axis, (size, patch) in enumerate(zip(shape, self.patch)):
            offset = max(0, patch - size) // 2  # zeros before the data in the padded volume
            high = max(size, patch) - patch
            if centre is None:
                start = int(rng.integers(high + 1))
            else:
                start = int(np.clip(int(centre[axis]) + offset - patch // 2, 0, high))
            window.append((start - offset, start - offset + patch))
        return window


class _Unlabelled:
    """A cached case seen without its label (a labelled case in the unlabelled pool)."""

    def __init__(self, case):
        self.case, self.shape, self.labelled = case, case.shape, False

    @property
    def image(self):
        return self.case.image

    label = None


def read_window(array: np.ndarray, lead: tuple[int, ...], window: list[tuple[int, int]], dtype) -> np.ndarray:
    """``array[lead + window]`` as a new contiguous array, zeros where the window leaves
    the array (only those voxels are read from a memory map)."""
    shape = array.shape[len(lead):]
    inside = tuple(slice(max(0, a), min(size, b)) for (a, b), size in zip(window, shape))
    data = np.array(array[lead + inside], dtype=dtype)  # a copy: never a view of the map
    release_pages(array)
    if data.shape == tuple(b - a for a, b in window):
        return data
    out = np.zeros([b - a for a, b in window], dtype=dtype)
    out[tuple(slice(s.start - a, s.stop - a) for s, (a, _) in zip(inside, window))] = data
    return out


def release_pages(array: np.ndarray) -> None:
    """Unmap from this process the pages a read of a memory map brought in (they stay in the
    kernel's page cache, so the next read is still cheap): without it the resident memory of
    a long run would grow towards the size of the cohort as patches touch every case."""
    madvise = getattr(getattr(array, "_mmap", None), "madvise", None)
    if madvise is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


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


def to_tensors(batch: dict, device: torch.device, memory_format=None) -> dict[str, torch.Tensor]:
    """Arrays (or tensors from a loader) on ``device``. On CUDA the copy is asynchronous
    (the loader pins host memory), so it overlaps with the previous step's compute."""
    non_blocking = device.type == "cuda"
    out = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(value).to(device, non_blocking=non_blocking)
        if memory_format is not None and key == "image":
            tensor = tensor.contiguous(memory_format=memory_format)
        out[key] = tensor
    return out


UNLABELLED_STREAM = 0x554E4C42  # "UNLB": seeds the unlabelled generator apart from any labelled one
BATCH_STREAMS = "paired"
"""How labelled and unlabelled batches are drawn, recorded in a run's ``config.json``: from
separate generators (``paired``). Runs without the field drew both from one generator, in turn."""


def paired_generators(seed: int | list[int]) -> tuple[np.random.Generator, np.random.Generator]:
    """The (labelled, unlabelled) generators of one stream. The labelled one is seeded as the
    single generator was before: supervised-only runs, which draw no unlabelled batch, keep
    their batches, and a method's labelled batches equal theirs at the same seed."""
    entropy = [seed] if isinstance(seed, int) else list(seed)
    return np.random.default_rng(seed), np.random.default_rng([*entropy, UNLABELLED_STREAM])


def draw_pair(labelled: PatchSampler, unlabelled: PatchSampler | None, sizes, rngs) -> tuple[dict, dict | None]:
    """One labelled batch and, when there is a pool, one unlabelled batch, each from its own generator."""
    labelled_rng, unlabelled_rng = rngs
    return (labelled.sample(sizes[0], labelled_rng),
            unlabelled.sample(sizes[1], unlabelled_rng) if unlabelled else None)


class BatchStream:
    """Endless (labelled, unlabelled) batches, prepared while the network works: by a
    background thread (``num_workers=0``; numpy copies release the GIL) or by worker
    processes (a torch ``DataLoader`` over :class:`BatchDataset`), each with its own seed.
    With ``pin_memory`` batches come back as pinned tensors, ready for an asynchronous copy
    to the GPU.

    Labelled and unlabelled batches come from two generators (:func:`paired_generators`), so
    at one seed every method sees the labelled batches that supervised-only training sees:
    the two runs differ in what the method adds (its unlabelled batches, its losses and
    noise), not in which labelled patches they learnt from."""

    def __init__(self, labelled: PatchSampler, unlabelled: PatchSampler | None, sizes: tuple[int, int],
                 seed: int, prefetch: int = 2, num_workers: int = 0, pin_memory: bool = False):
        self.labelled, self.unlabelled, self.sizes = labelled, unlabelled, tuple(sizes)
        self.seed = seed
        self.rngs = paired_generators(seed)
        self.prefetch = prefetch
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._loader_iter = None
        self.skip = 0
        """Batches to draw and discard before the first one (a resumed run: the ones it used)."""

    def draw(self) -> tuple[dict, dict | None]:
        return draw_pair(self.labelled, self.unlabelled, self.sizes, self.rngs)

    def __iter__(self) -> Iterator[tuple[dict, dict | None]]:
        self._stop = threading.Event()  # a stream can be iterated again after close()
        if self.num_workers > 0:
            yield from self._from_workers()
            return
        for _ in range(self.skip):
            self.draw()
        self.skip = 0
        if self.prefetch <= 0:
            while True:
                yield self._pinned(self.draw())
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

    def close(self) -> None:
        """Stop the background thread or worker processes."""
        self._stop.set()
        if self._loader_iter is not None:
            shutdown = getattr(self._loader_iter, "_shutdown_workers", None)
            if shutdown:
                shutdown()
            self._loader_iter = None

    def _from_workers(self):
        dataset = BatchDataset(self.labelled, self.unlabelled, self.sizes, self.seed, self.skip, self.num_workers)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            prefetch_factor=max(1, self.prefetch), persistent_workers=False, worker_init_fn=ignore_stop_signals)
        self.skip = 0
        rng_state = torch.get_rng_state()  # starting the workers draws a base seed: the run's RNG must not move
        self._loader_iter = iter(loader)
        torch.set_rng_state(rng_state)
        try:
            while True:
                labelled, unlabelled = next(self._loader_iter)
                yield labelled, (unlabelled or None)
        finally:
            self.close()

    def _pinned(self, item):
        if not self.pin_memory:
            return item
        return tuple({k: torch.from_numpy(v).pin_memory() for k, v in part.items()} if part else part for part in item)

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._pinned(self.draw())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # surfaced in the training thread
            self._queue.put(error)


def ignore_stop_signals(_worker_id: int) -> None:
    """In a loader worker: leave SIGTERM and SIGINT to the training process. Sent to the whole
    process group (``timeout``, batch schedulers, Ctrl+C), they would otherwise kill the
    workers first, and the run would end as failed instead of cancelled; the training
    process stops its workers itself, and they exit when it dies."""
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchDataset(torch.utils.data.IterableDataset):
    """Endless batches for a ``DataLoader``: worker ``w`` draws with the seed sequence
    ``(seed, w)``, so workers never repeat each other and a run is reproducible."""

    def __init__(self, labelled: PatchSampler, unlabelled: PatchSampler | None, sizes, seed: int, skip: int = 0,
                 num_workers: int = 1):
        super().__init__()
        self.labelled, self.unlabelled, self.sizes, self.seed = labelled, unlabelled, tuple(sizes), seed
        self.skip, self.num_workers = skip, max(1, num_workers)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        # The loader takes batches from the workers in turn, from worker 0. After ``skip``
        # batches, worker w plays the part that worker (w + skip) % n had in the full run.
        role = ((info.id if info else 0) + self.skip) % self.num_workers
        rngs = paired_generators([self.seed, role])
        for _ in range(len(range(role, self.skip, self.num_workers))):
            draw_pair(self.labelled, self.unlabelled, self.sizes, rngs)
        while True:
            labelled, unlabelled = draw_pair(self.labelled, self.unlabelled, self.sizes, rngs)
            yield labelled, unlabelled or {}

