"""Segmentation metrics per foreground class: Dice and 95th-percentile Hausdorff distance (mm).

Computed with MONAI (``compute_dice``, ``compute_hausdorff_distance`` with ``spacing`` and
``percentile=95``, surface voxels found by erosion). HD95 as in the Medical Segmentation
Decathlon / BraTS evaluations; Dice: Dice, "Measures of the amount of ecologic association
between species", Ecology 26 (1945).

Convention for empty masks (enforced here, never NaN, never a crash):
- class absent from both prediction and truth: Dice 1.0, HD95 0.0 (a correct "nothing here");
- class in exactly one of them: Dice 0.0, HD95 = the image diagonal in mm (the worst distance
  possible in the volume), so that means stay finite and penalise the miss.

``num_classes`` counts the background (class 0). Per-class results are dicts keyed by class
index 1..num_classes-1 (``dice[c]`` is class c; the background is not scored).
Arrays are (z, y, x); ``spacing_zyx`` is in the same axis order.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance


def _class_mask(labels: np.ndarray, class_index: int) -> torch.Tensor:
    """(1, 1, *spatial) binary tensor of one class: one class at a time keeps memory at one
    float per voxel even for large CT volumes (a full one-hot would need one per class)."""
    return torch.from_numpy(np.asarray(labels) == class_index)[None, None].float()


def _presence(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean per foreground class: is it present in ``labels``?"""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=num_classes)
    return counts[1:num_classes] > 0


def _check(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> None:
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"Prediction shape {np.shape(pred)} differs from truth shape {np.shape(truth)}")
    if num_classes < 2:
        raise ValueError("num_classes counts the background and must be at least 2")
    for name, labels in (("prediction", pred), ("truth", truth)):
        if np.size(labels) and (np.min(labels) < 0 or np.max(labels) >= num_classes):
            raise ValueError(f"{name} holds values outside 0..{num_classes - 1}")


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of each foreground class 1..num_classes-1 (see the module docstring for empty masks)."""
    _check(pred, truth, num_classes)
    in_pred, in_truth = _presence(pred, num_classes), _presence(truth, num_classes)
    dice = {}
    for index in range(1, num_classes):
        if not (in_pred[index - 1] and in_truth[index - 1]):
            dice[index] = 1.0 if in_pred[index - 1] == in_truth[index - 1] else 0.0
            continue
        score = compute_dice(_class_mask(pred, index), _class_mask(truth, index), include_background=True)
        dice[index] = float(score.item())
    return dice


def hd95_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                   spacing_zyx: Sequence[float]) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance in mm of each foreground class."""
    _check(pred, truth, num_classes)
    spacing_zyx = [float(s) for s in spacing_zyx]
    in_pred, in_truth = _presence(pred, num_classes), _presence(truth, num_classes)
    worst = float(np.linalg.norm(np.array(np.shape(pred)) * np.array(spacing_zyx)))
    distances = {}
    for index in range(1, num_classes):
        if not (in_pred[index - 1] and in_truth[index - 1]):
            distances[index] = 0.0 if in_pred[index - 1] == in_truth[index - 1] else worst
            continue
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about its own internal use of a deprecated argument.
            warnings.simplefilter("ignore", FutureWarning)
            distance = compute_hausdorff_distance(_class_mask(pred, index), _class_mask(truth, index),
                                                  include_background=True, percentile=95, spacing=spacing_zyx)
        distances[index] = float(distance.item())
    return distances


def evaluate_case(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing_zyx: Sequence[float],
                  class_names: Sequence[str] | None = None) -> dict:
    """Dice and HD95 of one case: ``{"dice": {class: v}, "hd95": {class: mm}, "mean_dice",
    "mean_hd95"}`` (means over the foreground classes)."""
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(1, num_classes)]
    if len(names) != num_classes - 1:
        raise ValueError(f"{len(names)} class names for {num_classes - 1} foreground classes")
    dice = list(dice_per_class(pred, truth, num_classes).values())
    hd95 = list(hd95_per_class(pred, truth, num_classes, spacing_zyx).values())
    return {"dice": dict(zip(names, dice)), "hd95": dict(zip(names, hd95)),
            "mean_dice": float(np.mean(dice)), "mean_hd95": float(np.mean(hd95))}


def summarise(case_results: Sequence[dict]) -> dict:
    """Mean (and standard deviation) over cases of each class's Dice and HD95, and overall
    means: ``{"cases", "dice": {class: mean}, "hd95": {...}, "dice_std", "hd95_std",
    "mean_dice", "mean_hd95"}``."""
    if not case_results:
        return {"cases": 0, "dice": {}, "hd95": {}, "dice_std": {}, "hd95_std": {},
                "mean_dice": None, "mean_hd95": None}
    summary: dict = {"cases": len(case_results)}
    for metric in ("dice", "hd95"):
        names = list(dict.fromkeys(name for result in case_results for name in result[metric]))
        values = {name: [r[metric][name] for r in case_results if name in r[metric]] for name in names}
        summary[metric] = {name: float(np.mean(v)) for name, v in values.items()}
        summary[f"{metric}_std"] = {name: float(np.std(v)) for name, v in values.items()}
        summary[f"mean_{metric}"] = float(np.mean([r[f"mean_{metric}"] for r in case_results]))
    return summary
