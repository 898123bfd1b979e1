"""Typed training settings, each defined once with its command-line option (``TrainConfig``),
and the presets that fill them. Torch-free: the Slicer panel imports it before torch exists.

A preset picks the network size, patch and batch for a kind of machine; anything given
explicitly (command line, Slicer panel) overrides the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalogue import DEFAULT_METHOD, DEFAULT_NETWORK, NETWORK_SIZES  # noqa: F401  (DEFAULT_METHOD re-exported)
from .errors import InputError
from .options import option
from .settings_check import check_train_settings

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
        # SGD 0.01 (SSL4MIS) is far from converged in a CPU budget: ACDC supervised-only stayed
        # at Dice 0.43 after 4350 iterations, against 0.54 in 3000 with AdamW 1e-3
        # (bench/results/time_budget.md, label_efficiency.md)
        "optimiser": "adamw",
        "lr": 1e-3,
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
        "optimiser": "sgd",
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
        "optimiser": "sgd",  # SSL4MIS's SGD 0.01 over its 30,000 iterations
    },
}
DEFAULT_LR = {"sgd": 0.01, "adamw": 3e-4}
"""The learning rate of an optimiser chosen without one, where the preset sets none."""
AUTO_PRESET = "auto"
"""Not a table: on CUDA, patch and batch from the free GPU memory (``training/memory.py``)
with the network size and fallback sizes of ``quality-gpu``; on CPU, ``fast-cpu``."""

PRESET_NAMES = (AUTO_PRESET, *PRESETS)

PROVISIONAL_ITERATIONS = 1_000_000
"""The iteration count of a time-budgeted run's warm-up, before the budget fixes it."""
BUDGET_ITERATION_CAP = PROVISIONAL_ITERATIONS
"""The most iterations a time budget may choose when no ``--iterations`` caps it."""


def preset_table(name: str | None) -> dict[str, Any]:
    return PRESETS["quality-gpu" if name == AUTO_PRESET else name or "fast-cpu"]


def default_preset(device_type: str) -> str:
    return AUTO_PRESET if device_type == "cuda" else "fast-cpu"


# How some options read and write their text (see ``TrainConfig``'s options).
_CHANNELS_LAST = {"auto": None, "on": True, "off": False}


def _patch(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch size {text!r}: expected numbers like 64,64,64") from None


def _parse_spacing(text):
    from .spacing import parse_spacing  # noqa: PLC0415 (numpy: only when a spacing is read)

    return parse_spacing(text)


def _spacing_words(spacing) -> list[str]:
    if isinstance(spacing, str):
        return [spacing]
    values = spacing if isinstance(spacing, (tuple, list)) else (spacing,)
    return [",".join(_number(float(v)) for v in values)]


def _number(value: float) -> str:
    """Short where that loses nothing (``1.5``, ``3``), else every digit."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _method_options(items: list[str]) -> dict[str, Any]:
    """``--method-option KEY=VALUE`` (repeatable): the value as JSON, else as text."""
    options = {}
    for item in items or ():
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _text_or_none(path) -> str | None:
    return str(path) if path else None


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as the run's ``config.json``.

    The one definition of each training setting: its default, and for those the command line
    exposes, its option (flag, help, choices, type; :func:`.options.option`). ``sslsegment
    train``'s arguments, the child command line of a Slicer or web round (``to_argv``), the
    panels' defaults and ``SSLSegmentLogic.startTraining`` all come from here.
    """

    method: str = option(DEFAULT_METHOD, "--method", help="see `sslsegment methods` (default: {default})")
    network: str = option(DEFAULT_NETWORK, "--network", help="see `sslsegment networks` (default: {default})")
    preset: str | None = option(None, "--preset", choices=PRESET_NAMES,
                                help="default: auto (patch and batch from the free GPU memory) on CUDA, "
                                     "fast-cpu on CPU")
    """None: chosen from the device (fast-cpu on CPU, quality-gpu on CUDA)."""
    size: str | None = option(None, "--size", choices=NETWORK_SIZES, help="network size (default: the preset's)")
    dim: str = option("auto", "--dim", choices=("auto", "2", "3"))
    iterations: int = option(2000, "--iterations", type=int, parser_default=None,
                             help="training iterations (default {default}); with --time-budget, the most it may "
                                  "choose")
    """With ``time_budget``: the most the budget may choose."""
    time_budget: float | None = option(None, "--time-budget", type=float, metavar="MINUTES",
                                       help="train for this many minutes, set-up and prediction of the unlabelled "
                                            "cases included: after a short warm-up the iteration count is fixed to "
                                            "fit (recorded in budget.json)")
    """Minutes for the whole run (set-up, training, validation, prediction of the unlabelled
    cases); the iteration count is fixed after a warm-up (``training/budget.py``)."""
    spacing: str | float | tuple[float, float, float] | None = option(
        None, "--spacing", metavar="RULE_OR_MM", to_value=_parse_spacing, to_text=_spacing_words,
        help="training spacing: 'data' (median of the labelled cases), 'fit' (coarser until a case fits the patch), "
             "one number in mm (isotropic in 3D, in-plane in 2D) or x,y,z; default: the preset's (fit on fast-cpu, "
             "data otherwise). Predictions keep each image's grid")
    """Training spacing: "data" (median), "fit" (coarser until a case fits the patch), or mm
    (one number: isotropic in 3D, in-plane in 2D; or x, y, z); None: the preset's. See
    ``spacing.py``. Predictions come back on each image's own grid."""
    patch_size: tuple[int, ...] | None = option(None, "--patch-size", type=_patch, help="z,y,x in 3D or y,x in 2D",
                                                to_text=lambda patch: [",".join(map(str, patch))])
    """Patch in array order: (z, y, x) in 3D, (y, x) in 2D; None: the preset's."""
    labelled_batch: int | None = option(None, "--labelled-batch", type=int)
    unlabelled_batch: int | None = option(None, "--unlabelled-batch", type=int)
    optimiser: str | None = option(None, "--optimiser", choices=("sgd", "adamw"),
                                   help="default: the preset's (adamw on fast-cpu, sgd otherwise)")
    """None: the preset's (AdamW on fast-cpu, SGD with momentum 0.9 otherwise)."""
    lr: float | None = option(None, "--lr", type=float,
                              help="default: 1e-3 for the fast-cpu preset's adamw, else 0.01 for sgd, 3e-4 for adamw")
    """None: the preset's with its optimiser (fast-cpu: 1e-3), else 0.01 for SGD (SSL4MIS), 3e-4 for AdamW."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    consistency: float | None = option(None, "--consistency", type=float,
                                       help="maximum unsupervised loss weight (default: the method's)")
    """Maximum unsupervised weight; None: the method's own default."""
    rampup_fraction: float = 1.0
    """Share of the run over which the unsupervised weight ramps up: all of it, as SSL4MIS."""
    dropout: float | None = option(None, "--dropout", type=float,
                                   help="backbone dropout (U-Net; default: the method's)")
    """Dropout in the backbone (U-Net); None: the method's default (0.1 for methods that need a
    stochastic student, 0 otherwise)."""
    ema_decay: float = 0.99
    method_options: dict[str, Any] = option(
        flag="--method-option", default_factory=dict, action="append", metavar="KEY=VALUE",
        help="method-specific setting, JSON value (repeatable)", to_value=_method_options,
        to_text=lambda options: [f"{key}={json.dumps(value)}" for key, value in options.items()])
    normalisation: str = option("zscore", "--normalisation", choices=("zscore", "ct"))
    ct_window: tuple[float, float] | None = option(
        None, "--ct-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
        to_value=lambda window: tuple(window) if window else None, to_text=lambda window: [str(v) for v in window])
    val_cases: int | None = option(None, "--val-cases", type=int,
                                   help="labelled cases held out for validation (overrides --validation)")
    """Labelled cases held out for validation; None: as ``validation`` says."""
    validation: str = option("auto", "--validation", choices=("auto", "holdout", "none"),
                             help="holdout: one labelled case in five validates, the best checkpoint is kept; none: "
                                  "every label trains, the last weights are kept; auto (default): holdout from 20 "
                                  "labelled cases on")
    """holdout: one labelled case in five validates and the best checkpoint is kept; none: every
    label trains and the last weights are kept; auto: holdout from 20 labelled cases on
    (``training/data_setup.py``, measured by ``bench/validation_holdout.py``)."""
    val_interval: int | None = option(None, "--val-interval", type=int)
    foreground_fraction: float = 0.33
    """Share of labelled patches centred on a foreground voxel (nnU-Net's oversampling)."""
    seed: int = option(1337, "--seed", type=int)
    device: str = option("auto", "--device", choices=("auto", "cpu", "cuda"))
    amp: bool = option(True, "--no-amp", action="store_true", help="no mixed precision on CUDA",
                       to_value=lambda no_amp: not no_amp, to_text=lambda amp: None if amp else [])
    """Mixed precision on CUDA (bf16 where supported) when ``precision`` is auto."""
    precision: str = option("auto", "--precision", choices=("auto", "fp32", "bf16"),
                            help="auto: mixed precision on CUDA, bf16 on CPUs with native bf16 (AMX, AVX512-BF16) "
                                 "when a check pass agrees with fp32, else fp32")
    """auto: mixed precision on CUDA (``amp``) and bf16 on CPUs with native bf16 (AMX,
    AVX512-BF16) whose kernels pass a check on the run's network and patch, fp32 otherwise;
    fp32: none; bf16: always, refused where the check fails (``precision.py``)."""
    channels_last: bool | None = option(
        None, "--channels-last", choices=tuple(_CHANNELS_LAST), parser_default="auto", group="scaling",
        help="channels-last tensors on CUDA (auto: on in 2D)", to_value=_CHANNELS_LAST.__getitem__,
        to_text=lambda on: [next(k for k, v in _CHANNELS_LAST.items() if v is on)])
    """Channels-last tensors on CUDA; None: on for 2D convolutional networks (where cuDNN's
    NHWC kernels are known to help with mixed precision), off otherwise. On CPU: 3D under
    bf16 unless False."""
    num_workers: int | None = option(None, "--num-workers", type=int, group="scaling",
                                     help="batch-preparing processes (default: 0 on CPU, 4 on CUDA)")
    """Processes preparing batches; None: 0 on CPU (a background thread), 4 on CUDA."""
    cache_dir: str | None = option(None, "--cache-dir", type=Path, group="scaling", to_value=_text_or_none,
                                   help="preprocessed-case cache (default: $SSLSEGMENT_CACHE or .sslsegment-cache "
                                        "beside --out)")
    """Preprocessed-case cache; None: ``$SSLSEGMENT_CACHE`` or ``.sslsegment-cache`` beside the run."""
    checkpoint_interval: int | None = option(None, "--checkpoint-interval", type=int, metavar="N",
                                             help="write a resumable checkpoint every N iterations (default: a "
                                                  "tenth of the run, at most 200)")
    """Iterations between resumable checkpoints; None: a tenth of the run, at most 200."""
    init_model: str | None = option(None, "--init-model", type=Path, to_value=_text_or_none,
                                    help="start from a previous model.pt (a retraining round)")
    predict_unlabelled: bool = option(False, "--predict-unlabelled", action="store_true",
                                      help="after training, predict every unlabelled case into OUT/predictions")
    largest_component: bool = option(False, "--largest-component", action="store_true",
                                     help="keep only each class's largest connected component in the predictions")
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
        optimiser = updates["optimiser"] = self.optimiser or preset["optimiser"]
        if optimiser not in DEFAULT_LR:
            raise InputError(f"unknown optimiser {optimiser!r}; choose sgd or adamw")
        if self.lr is None:
            updates["lr"] = preset["lr"] if optimiser == preset["optimiser"] and "lr" in preset else DEFAULT_LR[optimiser]
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
