"""Finding cases (image + optional label) in folders or in an nnU-Net / MSD ``dataset.json``,
and loading one labelled case with its classes matched by NAME.

Folder layout: ``images_dir`` holds the images; ``labels_dir`` the labels, matched to images by
case name (file name without extensions). Without ``labels_dir``, labels are looked for beside
the images as ``<case>.seg.nrrd`` or ``<case>-label.<ext>`` (Slicer's labelmap naming).
nnU-Net's channel suffix is understood: image ``a_0000.nii.gz`` goes with label ``a.nii.gz``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..prediction_outputs import without_prediction_outputs
from .class_names import check_classes_in_every_case, class_key, display_name
from .geometry import Geometry
from .io import IMAGE_EXTENSIONS, has_image_extension, read_image
from .labels import (SEGMENTATION_SUFFIX, ClassInfo, LabelFile, default_color, is_segmentation_file,
                     read_label, read_label_names)

_KNOWN_SUFFIXES = (SEGMENTATION_SUFFIX,) + tuple(sorted(IMAGE_EXTENSIONS, key=len, reverse=True))
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_LABEL_BESIDE_IMAGE = re.compile(r"^(?P<case>.+)-label$")
_GENERATED_NAME = re.compile(r"^label_(\d+)$")

log = logging.getLogger("sslsegment.data")


@dataclass
class Case:
    """One case: its image, its label file (None when unlabelled) and, for plain labelmaps
    described by a dataset.json, the label value -> class name map."""

    name: str
    image: Path
    label: Path | None = None
    label_names: dict[int, str] | None = field(default=None, repr=False)


@dataclass
class Dataset:
    """Labelled and unlabelled cases and the foreground classes (class index i+1 is classes[i])."""

    labelled: list[Case]
    unlabelled: list[Case]
    classes: list[ClassInfo]
    warnings: list[str] = field(default_factory=list)
    """What the run should log about the labels (e.g. a label value present in only some cases)."""

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]


def case_name(path: str | Path) -> str:
    """File name without its extensions: ``a.seg.nrrd`` and ``a.nii.gz`` -> ``a``."""
    name = Path(path).name
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.split(".")[0]


# --- folders --------------------------------------------------------------------------------

def list_image_files(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (sorted), skipping hidden/temporary files and Slicer segmentations."""
    folder = _existing_folder(folder, "image folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and has_image_extension(p)
                  and not is_segmentation_file(p))


def list_image_cases(folder: str | Path) -> list[Case]:
    """Every image of ``folder`` as an unlabelled case (for prediction); InputError when the
    folder is missing, holds no image, or two images share a case name. Slicer labelmaps
    (``<case>-label.nrrd``) and this project's own predictions are not images: they are
    skipped, with a warning."""
    files = without_prediction_outputs(list_image_files(folder), "an image")
    for path in [p for p in files if _LABEL_BESIDE_IMAGE.match(case_name(p))]:
        log.warning("%s: skipped: a <case>-label file is a labelmap, not an image", path)
        files.remove(path)
    if not files:
        raise InputError(f"{folder}: no image ({', '.join(IMAGE_EXTENSIONS)}) in the folder{_other_files(folder)}")
    images = _index_by_case(files, case_name, "image")
    return [Case(_strip_channel(name), path) for name, path in images.items()]


def list_label_files(folder: str | Path) -> list[Path]:
    folder = _existing_folder(folder, "label folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and has_image_extension(p))


def discover_dataset(images_dir: str | Path, labels_dir: str | Path | None = None,
                     require_labelled: bool = True) -> Dataset:
    """Cases of ``images_dir`` with labels from ``labels_dir`` (or beside the images).

    Classes are resolved by name across all labels (union, in order of first appearance over the
    cases sorted by name). InputError for a missing folder, no labelled case (unless
    ``require_labelled`` is False), a label without an image, duplicate case names.
    """
    image_files = list_image_files(images_dir)
    if labels_dir is not None and Path(labels_dir).resolve() == Path(images_dir).resolve():
        labels_dir = None  # one folder holding both: labels are told apart by their names
    if labels_dir is None:
        image_files, label_files = _split_labels_beside_images(image_files, Path(images_dir))
    else:
        label_files = list_label_files(labels_dir)
    # Predictions written into an image or label folder must never train as images or labels.
    image_files = without_prediction_outputs(image_files, "an image")
    label_files = without_prediction_outputs(label_files, "a label")
    if not image_files:
        raise InputError(f"{images_dir}: no image ({', '.join(IMAGE_EXTENSIONS)}) in the folder"
                         f"{_other_files(Path(images_dir))}; give the folder of the images with --images")
    labelled, unlabelled = _pair_cases(image_files, label_files, Path(images_dir))
    if require_labelled and not labelled:
        where = labels_dir if labels_dir is not None else f"{images_dir} (<case>.seg.nrrd or <case>-label.nrrd)"
        raise InputError(f"No labelled case: no label in {where} matches an image of {images_dir}")
    warnings: list[str] = []
    return Dataset(labelled, unlabelled, resolve_classes(labelled, warnings), warnings)


def _other_files(folder: str | Path) -> str:
    """`` (it holds: a.txt, b.jpg)`` naming what the folder holds instead of images."""
    others = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
    if not others:
        return " (the folder is empty)"
    return f" (it holds {len(others)} other entries: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"


def _existing_folder(folder: str | Path, what: str) -> Path:
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"{folder}: is a file, but {what} must be a folder; give the folder that holds it "
                         f"({folder.parent}), or put the file alone in a folder of its own")
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} not found")
    return folder


def _split_labels_beside_images(files: list[Path], folder: Path) -> tuple[list[Path], list[Path]]:
    labels = sorted(p for p in folder.iterdir() if p.is_file() and is_segmentation_file(p)
                    and not p.name.startswith("."))
    labels += [p for p in files if _LABEL_BESIDE_IMAGE.match(case_name(p))]
    images = [p for p in files if p not in labels]
    return images, labels


def _label_case_name(path: Path) -> str:
    name = case_name(path)
    match = _LABEL_BESIDE_IMAGE.match(name)
    return match["case"] if match else name


def _index_by_case(files: list[Path], name_of, what: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        name = name_of(path)
        if name in index:
            raise InputError(f"Duplicate case name {name!r}: {index[name]} and {path} are both {what}s of it")
        index[name] = path
    return index


def _pair_cases(image_files: list[Path], label_files: list[Path], images_dir: Path
                ) -> tuple[list[Case], list[Case]]:
    images = _index_by_case(image_files, case_name, "image")
    labels = _index_by_case(label_files, _label_case_name, "label")
    labelled, unlabelled, used = [], [], {}
    for name, image in images.items():
        label_key = _label_key(name, labels)
        if label_key is None:
            unlabelled.append(Case(_strip_channel(name), image))
            continue
        if label_key in used:
            raise InputError(f"Label {labels[label_key]} matches two images ({used[label_key]} and {image}); "
                             "multi-channel images are not supported")
        used[label_key] = image
        labelled.append(Case(label_key, image, labels[label_key]))
    orphans = sorted(str(labels[n]) for n in labels if n not in used)
    if orphans:
        raise InputError(f"Label(s) without an image in {images_dir}: {', '.join(orphans)}")
    return labelled, unlabelled


def _label_key(image_case: str, labels: dict[str, Path]) -> str | None:
    if image_case in labels:
        return image_case
    stripped = _strip_channel(image_case)
    return stripped if stripped in labels else None


def _strip_channel(name: str) -> str:
    match = _CHANNEL_SUFFIX.match(name)
    return match["case"] if match else name


def resolve_classes(labelled: list[Case], warnings: list[str] | None = None) -> list[ClassInfo]:
    """Union of the classes of all labels, by name (trimmed, case-folded: see
    :mod:`.class_names`), in order of first appearance. A named class missing from some
    cases raises InputError; a ``label_<v>`` missing from some adds to ``warnings``.

    When every name is a generated ``label_<v>`` (plain labelmaps without names), they are
    ordered by value instead, so ``label_1`` is class 1 whichever case shows it first.
    """
    classes: dict[str, ClassInfo] = {}
    names_per_case: dict[str, list[str]] = {}
    for case in labelled:
        infos = read_label_names(case.label, case.label_names)
        names_per_case[case.name] = [info.name for info in infos]
        for info in infos:
            classes.setdefault(class_key(info.name), dataclasses.replace(info, name=display_name(info.name)))
    found = check_classes_in_every_case(names_per_case)
    if warnings is not None:
        warnings.extend(found)
    ordered = list(classes.values())
    if ordered and all(_GENERATED_NAME.match(c.name) for c in ordered):
        ordered.sort(key=lambda c: int(_GENERATED_NAME.match(c.name).group(1)))
    return ordered


# --- dataset.json ---------------------------------------------------------------------------

def load_dataset_json(path: str | Path) -> Dataset:
    """Dataset described by an nnU-Net v2 or Medical Segmentation Decathlon ``dataset.json``.

    ``labels``: name -> value (nnU-Net v2) or value -> name (MSD). Cases: a ``training`` list of
    ``{"image", "label"}`` (MSD), or else the nnU-Net v2 folders ``imagesTr``/``labelsTr`` beside
    the json. Optional ``unlabelled`` (or ``unlabeled``) and ``test`` lists of images become
    unlabelled cases: semi-supervised training may use them, they have no label to leak.
    Paths are relative to the json's folder.
    """
    path = Path(path)
    data = _read_json(path)
    value_names = _parse_label_map(data.get("labels"), path)
    root = path.parent
    if "training" in data:
        labelled = [_training_case(entry, root, path) for entry in data["training"]]
    else:
        labelled = _nnunet_v2_cases(root, data, path)
    for case in labelled:
        case.label_names = value_names
    unlabelled = [_unlabelled_case(entry, root, path)
                  for key in ("unlabelled", "unlabeled", "test") for entry in data.get(key, [])]
    if not labelled:
        raise InputError(f"{path}: no labelled case")
    classes = [ClassInfo(name, default_color(i)) for i, (_, name) in enumerate(sorted(value_names.items()))]
    return Dataset(labelled, unlabelled, classes)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: dataset.json not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _parse_label_map(labels, path: Path) -> dict[int, str]:
    """Foreground label value -> name, from either direction of the ``labels`` map."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: 'labels' must map class names to values (e.g. {{\"background\": 0, \"LV\": 1}})")
    if all(str(key).strip().lstrip("-").isdigit() for key in labels):
        pairs = [(int(key), str(name)) for key, name in labels.items()]
    else:
        pairs = []
        for name, value in labels.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"{path}: label {name!r} has value {value!r}; region-based (list) labels "
                                 "are not supported, each class needs one integer value")
            pairs.append((value, str(name)))
    value_names = {value: name for value, name in pairs if value != 0}
    if any(value < 0 for value in value_names):
        raise InputError(f"{path}: negative label values in 'labels'")
    if len(set(value_names.values())) != len(value_names):
        raise InputError(f"{path}: two label values share a name in 'labels'")
    return value_names


def _resolve_file(relative: str, root: Path, json_path: Path) -> Path:
    if not isinstance(relative, str):
        raise InputError(f"{json_path}: expected a file path, got {relative!r}")
    resolved = (root / relative).resolve()
    if not resolved.is_file():
        raise InputError(f"{json_path}: file {relative} not found ({resolved})")
    return resolved


def _training_case(entry, root: Path, json_path: Path) -> Case:
    if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
        raise InputError(f"{json_path}: each 'training' entry needs 'image' and 'label', got {entry!r}")
    image = _resolve_file(entry["image"], root, json_path)
    label = _resolve_file(entry["label"], root, json_path)
    return Case(_strip_channel(case_name(image)), image, label)


def _unlabelled_case(entry, root: Path, json_path: Path) -> Case:
    relative = entry.get("image") if isinstance(entry, dict) else entry
    image = _resolve_file(relative, root, json_path)
    return Case(_strip_channel(case_name(image)), image)


def _nnunet_v2_cases(root: Path, data: dict, json_path: Path) -> list[Case]:
    channels = data.get("channel_names") or data.get("modality") or {"0": "image"}
    if len(channels) != 1:
        raise InputError(f"{json_path}: {len(channels)} input channels; only single-channel images are supported")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InputError(f"{json_path}: no 'training' list, and no imagesTr/labelsTr folders beside it")
    labelled, _ = _pair_cases(list_image_files(images_dir), list_label_files(labels_dir), images_dir)
    return labelled


# --- loading one case -----------------------------------------------------------------------

def load_labelled_case(case: Case, classes: list[ClassInfo]) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Image (float32), label (int64, values 0..K = class index by NAME in ``classes``) and the
    image geometry, all (z, y, x).

    InputError when the label's grid disagrees with the image's beyond rounding (a label
    cropped by Slicer to a sub-grid of the image is padded back), or when the label holds a
    class that ``classes`` lacks.
    """
    if case.label is None:
        raise InputError(f"Case {case.name!r} ({case.image}) has no label")
    image, geometry = read_image(case.image)
    label_file = read_label(case.label, case.label_names)
    labels = _on_image_grid(label_file, geometry, case)
    return image, _class_indices(labels, label_file, classes, case), geometry


def _class_indices(array: np.ndarray, label_file: LabelFile, classes: list[ClassInfo], case: Case) -> np.ndarray:
    index_of_name = {class_key(info.name): index for index, info in enumerate(classes, start=1)}
    lookup = np.zeros(max([int(array.max()) if array.size else 0, *label_file.segments]) + 1, dtype=np.int64)
    for value, info in label_file.segments.items():
        if class_key(info.name) not in index_of_name:
            raise InputError(f"{case.label}: class {info.name!r} (label value {value}) is not among the "
                             f"dataset classes {[c.name for c in classes]}")
        lookup[value] = index_of_name[class_key(info.name)]
    unnamed = sorted(set(np.unique(array).tolist()) - set(label_file.segments) - {0})
    if unnamed:
        raise InputError(f"{case.label}: label value(s) {unnamed} are not among the known classes")
    return lookup[array]


def _on_image_grid(label_file: LabelFile, image_geometry: Geometry, case: Case) -> np.ndarray:
    if label_file.geometry.matches(image_geometry):
        return label_file.array
    padded = _pad_sub_grid(label_file, image_geometry)
    if padded is not None:
        return padded
    problems = "; ".join(label_file.geometry.differences(image_geometry))
    raise InputError(f"Case {case.name!r}: label {case.label} and image {case.image} have different "
                     f"geometry (label vs image: {problems})")


def _pad_sub_grid(label_file: LabelFile, image_geometry: Geometry) -> np.ndarray | None:
    """Label placed into the image grid when it is a sub-grid of it (same spacing and direction,
    origin on a voxel of the image), as Slicer writes a segmentation cropped to its content."""
    label_geometry = label_file.geometry
    differences = label_geometry.differences(image_geometry)
    if any(d.startswith(("spacing", "direction")) for d in differences):
        return None
    index_to_lps = image_geometry.ijk_to_lps()[:3, :3]
    offset = np.linalg.solve(index_to_lps, np.subtract(label_geometry.origin, image_geometry.origin))
    start = np.round(offset).astype(int)
    end = start + np.array(label_geometry.size)
    if np.abs(offset - start).max() > 1e-2 or start.min() < 0 or np.any(end > np.array(image_geometry.size)):
        return None
    padded = np.zeros(image_geometry.shape_zyx, dtype=label_file.array.dtype)
    padded[start[2]:end[2], start[1]:end[1], start[0]:end[0]] = label_file.array
    return padded
