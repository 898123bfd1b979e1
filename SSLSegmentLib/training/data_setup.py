"""From a dataset on disk to preprocessed cases ready for sampling and validation.

Every case goes through the disk cache (:mod:`SSLSegmentLib.cache`): preprocessed once,
then memory-mapped. Only one case is ever whole in memory (while it is preprocessed), so
the memory of a run does not grow with the cohort. The plan comes from the image headers
alone (spacings), before any voxel is read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..cache import CachedCase, PreprocessCache, case_key
from ..fileio import file_sha256
from ..config import TrainConfig
from ..errors import InputError
from ..data.cases import Case, Dataset
from ..data.geometry import Geometry
from ..data.io import read_image
from ..data.labels import ClassInfo
from ..domain import spacing_outliers
from ..methods import method_class
from ..networks import network_divisor
from ..preprocessing import Plan, make_plan, target_spacing_for
from ..settings_check import check_patch_rank, check_resampled_size
from ..sampling import fit_patch
from ..spacing import training_spacing
from .distributed import DistributedContext

__all__ = ["TrainingData", "prepare_training_data", "describe_cases", "validation_split"]


@dataclass
class TrainingData:
    plan: Plan
    classes: list[ClassInfo]
    patch: tuple[int, ...]
    train: list[CachedCase]
    validation: list[CachedCase]
    unlabelled: list[CachedCase] = field(default_factory=list)
    divisor: int = 16
    """Spatial sizes the networks need to be divisible by."""
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    """Sampled (in-plane in 2D) shapes of the training cases: what a patch is fitted to."""
    cache: dict = field(default_factory=dict)
    """Where the cache is and how many entries were reused or built."""

    @property
    def num_classes(self) -> int:
        """Classes the network predicts, background included."""
        return len(self.classes) + 1

    def fit(self, patch: tuple[int, ...]) -> tuple[int, ...]:
        """``patch`` rounded to the network divisor and shrunk to the data."""
        return fit_patch(tuple(patch), self.shapes, self.divisor)


def describe_cases(dataset: Dataset, validation_names: set[str], checksums: dict[str, str] | None = None) -> dict:
    """What a run trained on, with checksums, so a round can be audited and reproduced."""
    checksums = checksums if checksums is not None else {}

    def sha(path) -> str:
        if str(path) not in checksums:
            checksums[str(path)] = file_sha256(path)
        return checksums[str(path)]

    def entry(case: Case) -> dict:
        item = {"name": case.name, "image": str(case.image), "image_sha256": sha(case.image)}
        if case.label is not None:
            item.update(label=str(case.label), label_sha256=sha(case.label),
                        role="validation" if case.name in validation_names else "train")
        return item

    return {"labelled": [entry(c) for c in dataset.labelled], "unlabelled": [entry(c) for c in dataset.unlabelled],
            "classes": [c.name for c in dataset.classes]}


HOLDOUT_MIN_LABELLED = 20
"""``validation="auto"`` holds cases out only from this many labelled cases on (one in five).
Below it every label trains and the last weights are kept, as nnU-Net keeps its final
checkpoint: one or two validation cases pick a checkpoint by noise, and a sixth of six labels
is a large loss. Evidence (weak): ``bench/validation_holdout.py`` on ACDC with 6 labels,
300 iterations, 3 seeds: all labels 0.173 mean Dice against 0.166 held out, the held-out
variant losing 0.054 on the seed where its one validation case picked an early checkpoint."""

VALIDATION_MODES = ("auto", "holdout", "none")


def validation_split(cases: list[Case], requested: int | None, seed: int, mode: str = "auto") -> set[str]:
    """Names of labelled cases held out for validation (the run then keeps its best
    checkpoint; with none, its last weights). ``requested`` wins when given; else ``mode``:
    ``holdout`` one in five (at least one), ``none`` no case, ``auto`` holdout from
    :data:`HOLDOUT_MIN_LABELLED` labelled cases on. Never every case."""
    import numpy as np  # noqa: PLC0415

    if mode not in VALIDATION_MODES:
        raise ValueError(f"unknown validation mode {mode!r}; choose one of {', '.join(VALIDATION_MODES)}")
    if requested is not None and requested > max(0, len(cases) - 1):
        raise InputError(f"--val-cases {requested}: there are {len(cases)} labelled cases and at least one must "
                         f"be left for training; give at most {max(0, len(cases) - 1)} (0: no validation)")
    if requested is not None:
        count = requested
    elif mode == "holdout" or (mode == "auto" and len(cases) >= HOLDOUT_MIN_LABELLED):
        count = max(1, len(cases) // 5)
    else:
        count = 0
    count = max(0, min(count, len(cases) - 1))
    order = np.random.default_rng(seed).permutation(len(cases))
    return {cases[i].name for i in order[:count]}


def read_geometry(path: str | os.PathLike) -> Geometry:
    """An image's geometry from its header only (the voxels are not read); a full read,
    with its error messages, for anything unusual."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        if reader.GetDimension() == 3 and reader.GetNumberOfComponents() == 1:
            return Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), reader.GetSize())
    except RuntimeError:
        pass
    return read_image(path)[1]


def prepare_training_data(dataset: Dataset, config: TrainConfig, log: logging.Logger, plan: Plan | None = None,
                          cache_dir: str | os.PathLike | None = None,
                          context: DistributedContext | None = None) -> tuple[TrainingData, dict]:
    """Plan (unless ``plan`` is given: a retrain reuses the previous model's), split, and
    bring every case into the cache. With several ranks, the ranks of each node build the
    missing entries together (one in ``local_world_size`` each), then all read them."""
    context = context or DistributedContext()
    geometries = {case.name: read_geometry(case.image) for case in [*dataset.labelled, *dataset.unlabelled]}
    new_plan = plan is None
    if new_plan:
        labelled_geometries = [geometries[case.name] for case in dataset.labelled]
        plan = make_plan(labelled_geometries, dim=config.dim, normalisation=config.normalisation,
                         ct_window=config.ct_window)
    check_patch_rank(config.patch_size, plan.dim)  # before the spacing rule reads the patch
    if new_plan:
        plan.target_spacing = training_spacing(config.spacing_rule(), labelled_geometries, plan.dim,
                                               config.preset_patch(plan.dim), plan.target_spacing)
    for warning in spacing_outliers({name: geometry.spacing for name, geometry in geometries.items()}):
        log.warning("%s", warning)
    for name, geometry in geometries.items():  # a wrong spacing unit: refused before any allocation
        check_resampled_size(name, geometry.size, geometry.spacing, target_spacing_for(geometry, plan))
    log.info("plan: %dD, target spacing %s, %s normalisation", plan.dim, tuple(round(s, 3) for s in plan.target_spacing),
             plan.normalisation)
    held_out = validation_split(dataset.labelled, config.val_cases, config.seed, config.validation)
    checksums: dict[str, str] = {}
    cases_json = describe_cases(dataset, held_out, checksums)
    cache = PreprocessCache(cache_dir if cache_dir is not None else Path(".sslsegment-cache"))
    jobs = [(case, _key(case, checksums, plan, dataset.classes), case.label is not None)
            for case in [*dataset.labelled, *dataset.unlabelled]]
    missing = [job for job in jobs if cache.get(job[0], job[1]) is None]
    context.barrier()
    for case, key, labelled in missing[context.local_rank::context.local_world_size]:
        cache.get_or_build(case, key, plan, dataset.classes, labelled)
    context.barrier()
    cached = {case.name: cache.get_or_build(case, key, plan, dataset.classes, labelled) for case, key, labelled in jobs}
    train = [cached[c.name] for c in dataset.labelled if c.name not in held_out]
    validation = [cached[c.name] for c in dataset.labelled if c.name in held_out]
    unlabelled = [cached[c.name] for c in dataset.unlabelled]
    shapes = [c.shape[1:] if plan.dim == 2 else c.shape for c in train + unlabelled]
    networks = (config.network, *method_class(config.method).extra_networks)
    divisor = max(map(network_divisor, networks))
    patch = fit_patch(config.preset_patch(plan.dim), shapes, divisor)
    if config.patch_size is not None and tuple(patch) != tuple(config.patch_size):
        log.warning("--patch-size %s became %s: each side is rounded down to a multiple of %d (what the networks "
                    "need) and clipped to the largest case (%s after resampling)", tuple(config.patch_size), patch,
                    divisor, tuple(int(v) for v in np.max(np.array(shapes), axis=0)))
    check_every_class_has_voxels(dataset.classes, [cached[c.name] for c in dataset.labelled])
    stats = {"dir": str(cache.root), "reused": len(jobs) - len(missing), "built": len(missing)}
    log.info("%d labelled for training, %d for validation, %d unlabelled; patch %s", len(train), len(validation),
             len(unlabelled), patch)
    log.info("preprocessed-case cache %s: %d reused, %d built", cache.root, stats["reused"], stats["built"])
    data = TrainingData(plan, dataset.classes, patch, train, validation, unlabelled, divisor, shapes, stats)
    return data, cases_json


def check_every_class_has_voxels(classes: list[ClassInfo], labelled: list[CachedCase]) -> None:
    """Refuse a class that no labelled case shows (a model would learn nothing of it), or a
    dataset without any class: InputError naming the classes."""
    if not classes:
        raise InputError("No class to learn: every label is empty (no voxel above 0). Draw the structures in at "
                         "least one labelled case")
    seen: set[int] = set()
    for case in labelled:
        seen.update(value for value, points in case.foreground().items() if len(points))
    empty = [info.name for index, info in enumerate(classes, start=1) if index not in seen]
    if empty:
        raise InputError(f"Class(es) {', '.join(map(repr, empty))} have no voxel in any labelled case (after "
                         "resampling to the training spacing): draw them in at least one case, or remove the empty "
                         "segments / label values")


def _key(case: Case, checksums: dict[str, str], plan: Plan, classes: list[ClassInfo]) -> str:
    label_sha = checksums[str(case.label)] if case.label is not None else None
    return case_key(checksums[str(case.image)], label_sha, plan, classes, getattr(case, "label_names", None))
