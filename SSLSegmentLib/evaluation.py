"""Evaluate a folder of predictions against a folder of labels (``sslsegment evaluate``).

Cases are matched by case name and classes by name; when either side is a plain labelmap
without class names, classes are matched by label value.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data.cases import case_name
from .data.labels import read_label
from .errors import InputError
from .metrics import dice_per_class, hd95_per_class

LABEL_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def label_files(folder: str | os.PathLike) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(LABEL_SUFFIXES) and not path.name.startswith("."):
            name = case_name(path)
            if name in files:
                raise InputError(f"{folder}: case {name!r} has two files ({files[name].name}, {path.name})")
            files[name] = path
    return files


def _is_named(segments) -> bool:
    return not all(info.name == f"label_{value}" for value, info in segments.items())


def aligned_indices(prediction, truth) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both label arrays re-indexed to one shared class list (1..K), and its names."""
    if _is_named(prediction.segments) and _is_named(truth.segments):
        names = list(dict.fromkeys([s.name for s in truth.segments.values()] +
                                   [s.name for s in prediction.segments.values()]))
        def remap(label):
            lookup = {value: names.index(info.name) + 1 for value, info in label.segments.items()}
            return _apply(label.array, lookup)
        return remap(prediction), remap(truth), names
    values = sorted(set(prediction.segments) | set(truth.segments))
    names = [(truth.segments.get(v) or prediction.segments[v]).name for v in values]
    lookup = {v: i + 1 for i, v in enumerate(values)}
    return _apply(prediction.array, lookup), _apply(truth.array, lookup), names


def _apply(array: np.ndarray, lookup: dict[int, int]) -> np.ndarray:
    out = np.zeros(array.shape, dtype=np.int64)
    for value, index in lookup.items():
        out[array == value] = index
    return out


def evaluate_pair(prediction_path: Path, truth_path: Path) -> dict[str, dict[str, float]]:
    prediction, truth = read_label(prediction_path), read_label(truth_path)
    if not prediction.geometry.matches(truth.geometry):
        raise InputError(f"{prediction_path.name}: prediction geometry differs from its label {truth_path.name}")
    pred, true, names = aligned_indices(prediction, truth)
    spacing_zyx = tuple(reversed(truth.geometry.spacing))
    dice = dice_per_class(pred, true, len(names) + 1)
    hd95 = hd95_per_class(pred, true, len(names) + 1, spacing_zyx)
    return {name: {"dice": float(dice[i + 1]), "hd95": float(hd95[i + 1])} for i, name in enumerate(names)}


def evaluate_folders(pred_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> dict:
    predictions, truths = label_files(pred_dir), label_files(labels_dir)
    common = sorted(set(predictions) & set(truths))
    if not common:
        raise InputError(f"no case of {labels_dir} has a prediction in {pred_dir} (cases are matched by file name)")
    cases = {name: evaluate_pair(predictions[name], truths[name]) for name in common}
    return {"cases": cases, "mean": mean_per_class(cases), "missing_predictions": sorted(set(truths) - set(predictions))}


def missing_message(results: dict, pred_dir: str | os.PathLike) -> str:
    """Which labelled cases have no prediction (the means leave them out)."""
    missing = results["missing_predictions"]
    evaluated = len(results["cases"])
    return (f"{len(missing)} labelled case(s) have no prediction in {pred_dir} and are not in the means "
            f"({evaluated} evaluated): {', '.join(missing)}. Predict them, or give --allow-missing")


def mean_per_class(cases: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    classes = list(dict.fromkeys(c for per_case in cases.values() for c in per_case))
    mean = {}
    for name in classes:
        values = [per_case[name] for per_case in cases.values() if name in per_case]
        mean[name] = {metric: float(np.mean([v[metric] for v in values])) for metric in ("dice", "hd95")}
    mean["all"] = {metric: float(np.mean([mean[c][metric] for c in classes])) for metric in ("dice", "hd95")}
    return mean


def format_table(results: dict) -> str:
    """A markdown table: one row per case, then the mean."""
    classes = [c for c in results["mean"] if c != "all"]
    header = "| case | " + " | ".join(f"{c} Dice | {c} HD95 (mm)" for c in classes) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(classes))]
    rows = list(results["cases"].items()) + [("mean", results["mean"])]
    for name, per_class in rows:
        cells = [f"{per_class[c]['dice']:.3f} | {per_class[c]['hd95']:.2f}" if c in per_class else "- | -" for c in classes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
