"""Interpolation Consistency Training (ICT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_method
from .helpers import TeacherStudentMethod, extra, extra_choice, interpolate


def mix_unlabelled(images, targets, lam, permutation):
    """Mixes each unlabelled image with its partner ``images[permutation]`` and the targets
    with the SAME ``lam`` (a number, or one per image broadcast over the rest) and partners:
    ``(mixed images, mixed targets)``."""
    return interpolate(images, images[permutation], lam), interpolate(targets, targets[permutation], lam)


@register_method
class ICT(TeacherStudentMethod):
    """The student's prediction on a mix of two unlabelled images should equal the same mix
    of the EMA teacher's predictions on each.

    Verma, Lamb, Kannala, Bengio & Lopez-Paz, "Interpolation Consistency Training for
    Semi-Supervised Learning", IJCAI 2019.

    ``lam ~ Beta(alpha, alpha)`` with alpha 0.2 (``settings.extra["ict_alpha"]``), one for the
    batch as every measurement here ran (``"ict_lambda": "sample"`` draws one per image, as
    SSL4MIS's ``ict_mix_factors``); partners are a random permutation of the unlabelled batch
    (the reference splits it in halves, which needs an even batch). Softmax MSE consistency.
    """

    name = "ict"
    options = ("ict_alpha", "ict_lambda")

    def training_step(self, labelled, unlabelled, step):
        supervised = self.supervised_loss(self.student(labelled["image"]), labelled["label"])
        images = unlabelled["image"]
        with torch.no_grad():
            teacher_probabilities = self.teacher(images).softmax(dim=1)
        alpha = float(extra(self.settings, "ict_alpha", 0.2))
        beta = torch.distributions.Beta(alpha, alpha)
        if extra_choice(self.settings, "ict_lambda", ("batch", "sample")) == "batch":
            lam = float(beta.sample())
        else:
            lam = beta.sample((images.shape[0],) + (1,) * (images.ndim - 1)).to(images.device, images.dtype)
        permutation = torch.randperm(images.shape[0], device=images.device)
        mixed, mixed_target = mix_unlabelled(images, teacher_probabilities, lam, permutation)
        consistency = F.mse_loss(self.student(mixed).softmax(dim=1), mixed_target)
        loss = supervised + step.consistency_weight * consistency
        return {"main": loss, "supervised": supervised.detach(), "consistency": consistency.detach()}
