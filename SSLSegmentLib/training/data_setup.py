"""From a dataset on disk to preprocessed arrays ready for sampling and validation."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data.cases import Case, Dataset
from ..data.io import read_image
from ..data.labels import ClassInfo
from ..preprocessing import Plan, make_plan, preprocess
from ..methods import method_class
from ..networks import network_divisor
from ..sampling import fit_patch


@dataclass
class PreparedCase:
    name: str
    image: np.ndarray
    label: np.ndarray | None = None


@dataclass
class TrainingData:
    plan: Plan
    classes: list[ClassInfo]
    patch: tuple[int, ...]
    train: list[PreparedCase]
    validation: list[PreparedCase]
    unlabelled: list[PreparedCase] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Classes the network predicts, background included."""
        return len(self.classes) + 1


def file_checksum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_cases(dataset: Dataset, validation_names: set[str]) -> dict:
    """What a run trained on, with checksums, so a round can be audited and reproduced."""
    def entry(case: Case) -> dict:
        item = {"name": case.name, "image": str(case.image), "image_sha256": file_checksum(case.image)}
        if case.label is not None:
            item.update(label=str(case.label), label_sha256=file_checksum(case.label),
                        role="validation" if case.name in validation_names else "train")
        return item

    return {"labelled": [entry(c) for c in dataset.labelled], "unlabelled": [entry(c) for c in dataset.unlabelled],
            "classes": [c.name for c in dataset.classes]}


def validation_split(cases: list[Case], requested: int | None, seed: int) -> set[str]:
    """Names of labelled cases held out for validation: ``requested``, or one in five once
    there are at least five (with fewer, every label is worth more in training)."""
    count = requested if requested is not None else (len(cases) // 5 if len(cases) >= 5 else 0)
    count = max(0, min(count, len(cases) - 1))
    order = np.random.default_rng(seed).permutation(len(cases))
    return {cases[i].name for i in order[:count]}


def prepare_training_data(dataset: Dataset, config: TrainConfig, log: logging.Logger,
                          plan: Plan | None = None) -> tuple[TrainingData, dict]:
    """Load, normalise and resample every case. ``plan`` given (a retrain) is reused so the
    previous model's weights see the same spacing and dimension."""
    from ..data.cases import load_labelled_case  # noqa: PLC0415

    loaded = [(case, *load_labelled_case(case, dataset.classes)) for case in dataset.labelled]
    if plan is None:
        plan = make_plan([geometry for *_, geometry in loaded], dim=config.dim,
                         normalisation=config.normalisation, ct_window=config.ct_window)
    log.info("plan: %dD, target spacing %s, %s normalisation", plan.dim, tuple(round(s, 3) for s in plan.target_spacing),
             plan.normalisation)
    held_out = validation_split(dataset.labelled, config.val_cases, config.seed)
    train, validation = [], []
    for case, image, label, geometry in loaded:
        image, label, _ = preprocess(image, geometry, plan, label)
        (validation if case.name in held_out else train).append(PreparedCase(case.name, image, label))
    unlabelled = [PreparedCase(case.name, preprocess(*read_image(case.image), plan)[0]) for case in dataset.unlabelled]
    shapes = [c.image.shape for c in train + unlabelled]
    in_plane = [s[1:] for s in shapes] if plan.dim == 2 else shapes
    networks = (config.network, *method_class(config.method).extra_networks)
    patch = fit_patch(config.preset_patch(plan.dim), in_plane, max(map(network_divisor, networks)))
    log.info("%d labelled for training, %d for validation, %d unlabelled; patch %s",
             len(train), len(validation), len(unlabelled), patch)
    data = TrainingData(plan, dataset.classes, patch, train, validation, unlabelled)
    return data, describe_cases(dataset, held_out)
