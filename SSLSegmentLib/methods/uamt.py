"""Uncertainty-Aware Mean Teacher (UA-MT)."""

from __future__ import annotations

import math

import torch

from .base import register_method, sigmoid_rampup
from .helpers import TeacherStudentMethod, extra, joined_images, perturbation_noise


def uncertainty_threshold(iteration: int, total: int, log_of: int = 2) -> float:
    """``(0.75 + 0.25 * sigmoid_rampup(t, T)) * ln(log_of)``: the entropy threshold rises from 3/4
    to all of ``ln 2``, the reference's value for any number of classes (``log_of=2``); with
    ``log_of=C`` it rises to the maximum entropy ``ln C``, and on ACDC (C = 4) the mask then
    keeps almost every voxel, so that UA-MT becomes Mean Teacher."""
    return (0.75 + 0.25 * sigmoid_rampup(iteration, total)) * math.log(log_of)


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy (natural log) over classes, ``(B, 1, *)``."""
    return -(probabilities * torch.log(probabilities + 1e-6)).sum(dim=1, keepdim=True)


def masked_mse(student_probabilities, teacher_probabilities, mask, denominator: str = "classes") -> torch.Tensor:
    """``sum(mask * (p_s - p_t)^2) / (C * sum(mask))``: the mean squared error over classes
    and certain voxels. ``denominator="reference"`` divides by ``2 * sum(mask)`` as SSL4MIS
    does for every data set: its LA code's C = 2 kept on ACDC, where it makes the term C / 2 = 2
    times larger (a deliberate departure here; the same value at C = 2)."""
    num_classes = 2 if denominator == "reference" else student_probabilities.shape[1]
    squared = (student_probabilities - teacher_probabilities) ** 2
    return (mask * squared).sum() / (num_classes * mask.sum() + 1e-16)


@register_method
class UAMT(TeacherStudentMethod):
    """Mean Teacher whose consistency only counts voxels where the teacher is certain.

    Yu, Wang, Li, Fu & Heng, "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D
    Left Atrium Segmentation", MICCAI 2019.

    Uncertainty = entropy of the mean teacher softmax over T (default 8,
    ``settings.extra["uamt_passes"]``) passes, each with its own input noise (as Mean Teacher's,
    :func:`~.helpers.perturbation_noise`) and dropout (``default_dropout`` 0.1: Monte Carlo
    dropout, as the paper); voxels with uncertainty below :func:`uncertainty_threshold` enter
    the softmax MSE. The threshold's scale is ``ln 2`` as the reference
    (``"uamt_threshold_log": "classes"`` takes ``ln C``, the paper's maximum entropy, which on
    four classes masks almost nothing). The MSE is a mean over classes
    (``"uamt_mse_denominator": "reference"`` divides by 2 whatever C, as the reference code).
    """

    name = "uamt"
    options = ("uamt_passes", "uamt_threshold_log", "uamt_mse_denominator", "noise_std", "noise_clip", "noise_scale")
    default_dropout = 0.1

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = self.student(images)
        supervised = self.supervised_loss(logits[:n_labelled], labelled["label"])
        target, uncertainty = self.teacher_target(unlabelled["image"])
        log_of = self.num_classes if extra(self.settings, "uamt_threshold_log", "reference") == "classes" else 2
        mask = (uncertainty < uncertainty_threshold(step.iteration, step.total, log_of)).to(target.dtype)
        consistency = masked_mse(logits[n_labelled:].softmax(dim=1), target, mask,
                                 extra(self.settings, "uamt_mse_denominator", "classes"))
        loss = supervised + step.consistency_weight * consistency
        return {"main": loss, "supervised": supervised.detach(), "consistency": consistency.detach(),
                "certain_fraction": mask.mean()}

    @torch.no_grad()
    def teacher_target(self, images):
        """The teacher's softmax on a noisy copy, and the entropy of its mean over T passes."""
        target = self.teacher(perturbation_noise(images, self.settings)).softmax(dim=1)
        passes = int(extra(self.settings, "uamt_passes", 8))
        mean = sum(self.teacher(perturbation_noise(images, self.settings)).softmax(dim=1) for _ in range(passes)) / passes
        return target, entropy(mean)
