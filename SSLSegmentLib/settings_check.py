"""Checks of training settings made before anything is read or written (torch-free).

The command line and the Slicer logic call the same checks, so a bad number is refused
with a message naming the setting and the fix, before a run folder or a child process
exists. The checks that need the data (patch against the plan, resampled sizes) are here
too, called once the plan is known.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import InputError

MAX_RESAMPLED_VOXELS = 1_000_000_000
"""A case larger than this after resampling (4 GB as float32) is refused up front: it is
almost always a spacing in the wrong unit (micrometres read as millimetres)."""


def _finite_positive(name: str, value: float | None, hint: str) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number above 0, got {value!r}; {hint}")


def _positive_int(name: str, value: int | None, hint: str, minimum: int = 1) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name} must be a whole number of at least {minimum}, got {value!r}; {hint}")


def check_train_settings(config: Any) -> None:
    """Refuse settings no run can use (``config``: a :class:`~SSLSegmentLib.config.TrainConfig`)."""
    from .config import TrainConfig  # noqa: PLC0415 (config imports this module: the examples are its defaults)

    _finite_positive("--lr", config.lr, "try 0.01 for sgd or 3e-4 for adamw (or leave it out)")
    _positive_int("--iterations", config.iterations,
                  f"give the number of training steps, e.g. {TrainConfig.iterations}")
    _positive_int("--labelled-batch", config.labelled_batch, "give 1 or more labelled patches per step "
                  "(or leave it out for the preset's)")
    _positive_int("--unlabelled-batch", config.unlabelled_batch, "give 1 or more unlabelled patches per step "
                  "(or leave it out for the preset's)")
    _positive_int("--val-interval", config.val_interval, "validate every N steps, N >= 1")
    _positive_int("--checkpoint-interval", getattr(config, "checkpoint_interval", None),
                  "write a resumable checkpoint every N steps, N >= 1")
    seed = getattr(config, "seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise InputError(f"--seed must be a whole number from 0 to {2**32 - 1} (what NumPy's generator takes), "
                         f"got {seed!r}; e.g. --seed {TrainConfig.seed}")
    if config.val_cases is not None:
        _positive_int("--val-cases", config.val_cases, "give 0 for no validation", minimum=0)
    if config.consistency is not None:
        value = config.consistency
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"--consistency must be a finite number of 0 or more (the largest weight of the "
                             f"unsupervised loss), got {value!r}; try the method's default by leaving it out")
    if config.ct_window is not None:
        check_ct_window(config.ct_window)
    if config.patch_size is not None:
        check_patch_entries(config.patch_size)
    if not isinstance(config.method_options, dict):
        raise InputError("--method-option must be KEY=VALUE")


def check_ct_window(window: Sequence[float]) -> None:
    low, high = (float(v) for v in window)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise InputError(f"--ct-window LOW HIGH must be two finite numbers with LOW < HIGH, got {low:g} {high:g}; "
                         "e.g. --ct-window -1000 1000")


def check_patch_entries(patch: Sequence[int]) -> None:
    if not patch or any(not isinstance(v, int) or v <= 0 for v in patch):
        raise InputError(f"--patch-size {','.join(map(str, patch))}: every entry must be a whole number above 0, "
                         "e.g. 64,64,64 (3D) or 128,128 (2D)")


def check_patch_rank(patch: Sequence[int] | None, dim: int) -> None:
    """A patch must have one entry per axis of the plan: (z, y, x) in 3D, (y, x) in 2D."""
    if patch is None or len(patch) == dim:
        return
    example = "64,64,64 (z,y,x)" if dim == 3 else "128,128 (y,x)"
    raise InputError(f"--patch-size {','.join(map(str, patch))} has {len(patch)} entries but this run is {dim}D; "
                     f"give {dim} entries, e.g. {example}, or choose --dim {len(patch)}"
                     if len(patch) in (2, 3) else
                     f"--patch-size {','.join(map(str, patch))} has {len(patch)} entries; give {dim}, e.g. {example}")


def check_method_options(method: str, options: dict, valid: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        choices = ", ".join(sorted(valid)) if valid else "none (this method takes no --method-option)"
        raise InputError(f"unknown --method-option {', '.join(unknown)} for method {method!r}; valid keys: {choices}")


def check_resampled_size(case: str, size_xyz: Sequence[int], spacing: Sequence[float],
                         target: Sequence[float]) -> None:
    """Refuse a case whose resampled grid would be absurd (wrong spacing unit), naming it."""
    voxels = 1.0
    for count, have, want in zip(size_xyz, spacing, target):
        voxels *= max(1.0, count * have / want)
    if voxels > MAX_RESAMPLED_VOXELS:
        raise InputError(
            f"Case {case!r}: spacing {tuple(round(s, 6) for s in spacing)} mm against the target "
            f"{tuple(round(t, 6) for t in target)} mm would resample it to about {voxels:.3g} voxels. Its "
            "spacing is probably in another unit (micrometres or metres): fix the image header so that every "
            "case's spacing is in millimetres")
