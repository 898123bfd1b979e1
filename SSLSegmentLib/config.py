"""Typed training settings and the presets that fill them.

A preset picks the network size, patch and batch for a kind of machine; anything given
explicitly (command line, Slicer panel) overrides the preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .settings_check import check_train_settings

DEFAULT_METHOD = "bcp"
"""The method a user gets without asking: the one ``bench/label_efficiency.py`` measures best over
3 seeds on both ACDC (2D) and LA (3D). Defined here only (this module imports no torch) and
used by the CLI, the training settings, the jobs, the logic and the Slicer panel."""

PRESETS: dict[str, dict[str, Any]] = {
    "fast-cpu": {
        "size": "small",
        "patch_size_3d": (64, 64, 64),
        "patch_size_2d": (128, 128),
        "labelled_batch": 2,
        "unlabelled_batch": 2,
        "labelled_batch_2d": 4,
        "unlabelled_batch_2d": 4,
        "spacing": "fit",  # coarser, so that a case fits the patch (spacing.py)
    },
    "balanced": {
        "size": "small",
        "patch_size_3d": (96, 96, 96),
        "patch_size_2d": (192, 192),
        "labelled_batch": 2,
        "unlabelled_batch": 2,
        "labelled_batch_2d": 8,
        "unlabelled_batch_2d": 8,
        "spacing": "data",
    },
    "quality-gpu": {
        "size": "base",
        "patch_size_3d": (80, 112, 112),
        "patch_size_2d": (256, 256),
        "labelled_batch": 2,
        "unlabelled_batch": 2,
        "labelled_batch_2d": 12,
        "unlabelled_batch_2d": 12,
        "spacing": "data",
    },
}
AUTO_PRESET = "auto"
"""Not a table: on CUDA, patch and batch from the free GPU memory (``training/memory.py``)
with the network size and fallback sizes of ``quality-gpu``; on CPU, ``fast-cpu``."""

PRESET_NAMES = (AUTO_PRESET, *PRESETS)

PROVISIONAL_ITERATIONS = 1_000_000
"""The iteration count of a time-budgeted run's warm-up, before the budget fixes it."""


def preset_table(name: str | None) -> dict[str, Any]:
    return PRESETS["quality-gpu" if name == AUTO_PRESET else name or "fast-cpu"]


def default_preset(device_type: str) -> str:
    return AUTO_PRESET if device_type == "cuda" else "fast-cpu"


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as the run's ``config.json``."""

    method: str = DEFAULT_METHOD
    network: str = "unet"
    preset: str | None = None
    """None: chosen from the device (fast-cpu on CPU, quality-gpu on CUDA)."""
    size: str | None = None
    dim: str = "auto"
    iterations: int = 2000
    """With ``time_budget``: the most the budget may choose."""
    time_budget: float | None = None
    """Minutes for the whole run (set-up, training, validation, prediction of the unlabelled
    cases); the iteration count is fixed after a warm-up (``training/budget.py``)."""
    spacing: str | float | tuple[float, float, float] | None = None
    """Training spacing: "data" (median), "fit" (coarser until a case fits the patch), or mm
    (one number: isotropic in 3D, in-plane in 2D; or x, y, z); None: the preset's. See
    ``spacing.py``. Predictions come back on each image's own grid."""
    patch_size: tuple[int, ...] | None = None
    """Patch in array order: (z, y, x) in 3D, (y, x) in 2D; None: the preset's."""
    labelled_batch: int | None = None
    unlabelled_batch: int | None = None
    optimiser: str = "sgd"
    lr: float | None = None
    """None: 0.01 for SGD (SSL4MIS), 3e-4 for AdamW."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    consistency: float | None = None
    """Maximum unsupervised weight; None: the method's own default."""
    rampup_fraction: float = 1.0
    """Share of the run over which the unsupervised weight ramps up: all of it, as SSL4MIS."""
    dropout: float | None = None
    """Dropout in the backbone (U-Net); None: the method's default (0.1 for methods that need a
    stochastic student, 0 otherwise)."""
    ema_decay: float = 0.99
    method_options: dict[str, Any] = field(default_factory=dict)
    normalisation: str = "zscore"
    ct_window: tuple[float, float] | None = None
    val_cases: int | None = None
    """Labelled cases held out for validation; None: as ``validation`` says."""
    validation: str = "auto"
    """holdout: one labelled case in five validates and the best checkpoint is kept; none: every
    label trains and the last weights are kept; auto: holdout from 20 labelled cases on
    (``training/data_setup.py``, measured by ``bench/validation_holdout.py``)."""
    val_interval: int | None = None
    foreground_fraction: float = 0.33
    """Share of labelled patches centred on a foreground voxel (nnU-Net's oversampling)."""
    seed: int = 1337
    device: str = "auto"
    amp: bool = True
    """Mixed precision on CUDA (bf16 where supported) when ``precision`` is auto."""
    precision: str = "auto"
    """auto: mixed precision on CUDA (``amp``) and bf16 on CPUs with native bf16 (AMX,
    AVX512-BF16); fp32: none; bf16: always (``precision.py``)."""
    channels_last: bool | None = None
    """Channels-last tensors on CUDA; None: on for 2D convolutional networks (where cuDNN's
    NHWC kernels are known to help with mixed precision), off otherwise. On CPU: 3D under
    bf16 unless False."""
    num_workers: int | None = None
    """Processes preparing batches; None: 0 on CPU (a background thread), 4 on CUDA."""
    cache_dir: str | None = None
    """Preprocessed-case cache; None: ``$SSLSEGMENT_CACHE`` or ``.sslsegment-cache`` beside the run."""
    checkpoint_interval: int | None = None
    """Iterations between resumable checkpoints; None: a tenth of the run, at most 200."""
    init_model: str | None = None
    predict_unlabelled: bool = False
    largest_component: bool = False
    """Keep only each class's largest connected component in the unlabelled predictions."""

    def resolved(self, device_type: str) -> "TrainConfig":
        """A copy with the preset's choices filled into every unset field."""
        check_train_settings(self)
        preset_name = self.preset or default_preset(device_type)
        if preset_name == AUTO_PRESET and device_type != "cuda":
            preset_name = "fast-cpu"
        if preset_name not in PRESET_NAMES:
            raise InputError(f"unknown preset {preset_name!r}; choose one of: {', '.join(PRESET_NAMES)}")
        preset = preset_table(preset_name)
        updates: dict[str, Any] = {"preset": preset_name}
        if self.size is None:
            updates["size"] = preset["size"]
        if self.lr is None:
            updates["lr"] = 0.01 if self.optimiser == "sgd" else 3e-4
        if self.optimiser not in ("sgd", "adamw"):
            raise InputError(f"unknown optimiser {self.optimiser!r}; choose sgd or adamw")
        if self.iterations < 1:
            raise InputError(f"iterations must be at least 1, got {self.iterations}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InputError(f"time budget must be a positive number of minutes, got {self.time_budget}")
        if self.spacing is not None:
            from .spacing import parse_spacing  # noqa: PLC0415

            updates["spacing"] = parse_spacing(self.spacing)
        if self.validation not in ("auto", "holdout", "none"):
            raise InputError(f"unknown validation {self.validation!r}; choose auto, holdout or none")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"unknown precision {self.precision!r}; choose auto, fp32 or bf16")
        if self.num_workers is None:
            updates["num_workers"] = 4 if device_type == "cuda" else 0
        elif self.num_workers < 0:
            raise InputError(f"num_workers must be 0 or more, got {self.num_workers}")
        return dataclasses.replace(self, **updates)

    def batch_sizes(self, dim: int) -> tuple[int, int]:
        preset = preset_table(self.preset)
        suffix = "_2d" if dim == 2 else ""
        labelled = self.labelled_batch or preset["labelled_batch" + suffix]
        unlabelled = self.unlabelled_batch or preset["unlabelled_batch" + suffix]
        return labelled, unlabelled

    def preset_patch(self, dim: int) -> tuple[int, ...]:
        if self.patch_size is not None:
            return tuple(self.patch_size)
        return tuple(preset_table(self.preset)[f"patch_size_{dim}d"])

    def spacing_rule(self):
        """The training-spacing rule: the one given, else the preset's."""
        return self.spacing if self.spacing is not None else preset_table(self.preset).get("spacing", "data")

    def sizes_from_free_memory(self) -> bool:
        """True when the preset picks patch and batch from the free GPU memory."""
        return self.preset == AUTO_PRESET

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
