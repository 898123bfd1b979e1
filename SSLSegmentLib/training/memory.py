"""GPU memory safety: pick patch and batch from the free memory, and fall back on
out-of-memory instead of dying.

- :func:`choose_patch_and_batch`: the ``auto`` preset on CUDA. The bytes a training step
  keeps for backward are measured once on a small probe batch (every tensor autograd saves,
  counted with ``saved_tensors_hooks``: the method's real step, mixed precision included),
  scaled to each candidate patch and batch, and the largest candidate that fits in
  :data:`HEADROOM` of the free memory wins (larger patches first, as nnU-Net prefers
  context over batch size).
- :func:`shrink`: after an out-of-memory error, halve the batch, then shrink the patch (a
  multiple of the network divisor), until nothing is left to shrink.
- :class:`FaultInjector`: a simulated device that "has room" for a number of voxels, for
  tests on machines without a GPU (``SSLSEGMENT_SIMULATE_OOM_VOXELS``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch

HEADROOM = 0.75
"""Share of the free GPU memory a chosen patch and batch may use (cuDNN workspaces,
fragmentation, the validation pass)."""

SIMULATE_ENV = "SSLSEGMENT_SIMULATE_OOM_VOXELS"

PATCH_LADDER = {
    3: [(160, 192, 192), (128, 160, 160), (128, 128, 128), (112, 128, 128), (96, 128, 128), (96, 96, 96),
        (80, 96, 96), (64, 96, 96), (64, 64, 64), (48, 64, 64), (32, 64, 64), (32, 32, 32)],
    2: [(512, 512), (384, 384), (320, 320), (256, 256), (192, 192), (128, 128), (96, 96), (64, 64)],
}
BATCH_PREFERRED = {3: 2, 2: 8}
BATCH_MAX = {3: 4, 2: 24}


class SimulatedOutOfMemory(RuntimeError):
    """Raised by :class:`FaultInjector`; treated exactly like ``torch.cuda.OutOfMemoryError``."""


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (SimulatedOutOfMemory, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class FaultInjector:
    """Raise :class:`SimulatedOutOfMemory` when a step's batch holds more than
    ``max_voxels`` voxels (labelled + unlabelled patches): a device with that much room."""

    max_voxels: int

    @classmethod
    def from_env(cls) -> "FaultInjector | None":
        value = os.environ.get(SIMULATE_ENV)
        return cls(int(value)) if value else None

    def __call__(self, batch_sizes: tuple[int, int], patch: tuple[int, ...]) -> None:
        voxels = sum(batch_sizes) * math.prod(patch)
        if voxels > self.max_voxels:
            raise SimulatedOutOfMemory(f"simulated out of memory: {voxels} voxels > {self.max_voxels}")


StepCheck = Callable[[tuple[int, int], tuple[int, ...]], None]


def shrink(batch_sizes: tuple[int, int], patch: tuple[int, ...], divisor: int
           ) -> tuple[tuple[int, int], tuple[int, ...]] | None:
    """Smaller settings after an out-of-memory error: half the batch while either batch is
    above 1, then each patch axis to 3/4 (rounded down to ``divisor``, at least ``divisor``);
    None when both are already minimal."""
    if max(batch_sizes) > 1:
        return tuple(max(1, b // 2) for b in batch_sizes), tuple(patch)
    smaller = []
    for size in patch:
        target = max(divisor, int(size * 0.75) // divisor * divisor)
        if target == size and size > divisor:
            target = size - divisor
        smaller.append(target)
    if tuple(smaller) == tuple(patch):
        return None
    return tuple(batch_sizes), tuple(smaller)


# --- choosing from the free memory ----------------------------------------------------------
def saved_tensor_bytes(step: Callable[[], object]) -> int:
    """Bytes of every tensor autograd keeps for backward while ``step()`` runs (an upper
    bound of the activation memory: a tensor saved twice is counted twice)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return total


def static_bytes(method: torch.nn.Module) -> int:
    """Weights, gradients and two optimiser states per trainable parameter, weights of the rest."""
    trainable = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in method.parameters() if not p.requires_grad)
    return 4 * trainable + frozen


def choose_patch_and_batch(free_bytes: int, bytes_per_sample_voxel: float, fixed_bytes: int, dim: int,
                           fit: Callable[[tuple[int, ...]], tuple[int, ...]]) -> tuple[tuple[int, ...], int]:
    """The largest ladder patch (after ``fit``: the data's size and the network divisor) whose
    step fits with the preferred batch per stream, then the largest batch up to
    :data:`BATCH_MAX` with that patch. Falls back to the smallest patch with batch 1."""
    budget = HEADROOM * free_bytes - fixed_bytes

    def need(patch, batch):
        return bytes_per_sample_voxel * math.prod(patch) * 2 * batch  # labelled + unlabelled

    patches = []
    for candidate in PATCH_LADDER[dim]:
        fitted = fit(candidate)
        if fitted not in patches:
            patches.append(fitted)
    for batch in dict.fromkeys((BATCH_PREFERRED[dim], 1)):
        for patch in patches:
            if need(patch, batch) <= budget:
                while patch == patches[0] and batch < BATCH_MAX[dim] and need(patch, batch + 1) <= budget:
                    batch += 1
                return patch, batch
    return patches[-1], 1


def bytes_per_sample_voxel(method, dim: int, patch: tuple[int, ...], num_classes: int, device: torch.device,
                           autocast_context) -> float:
    """Activation bytes per voxel per batch item of one real ``training_step`` of ``method``,
    measured on a random labelled + unlabelled pair of ``patch``-sized items (nothing is
    back-propagated; the graph is dropped)."""
    from ..methods import StepInfo  # noqa: PLC0415

    shape = (1, 1, *patch)
    labelled = {"image": torch.randn(shape, device=device),
                "label": torch.randint(0, num_classes, shape, device=device)}
    unlabelled = {"image": torch.randn(shape, device=device)}
    method.train()

    def step():
        with autocast_context:
            method.training_step(labelled, unlabelled if method.uses_unlabelled else None, StepInfo(0, 1, 0.0))

    used = saved_tensor_bytes(step)
    for p in method.parameters():
        p.grad = None
    return used / (2 * math.prod(patch))
