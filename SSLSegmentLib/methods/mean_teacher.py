"""Mean Teacher."""

from __future__ import annotations

import torch

from .base import register_method
from .helpers import TeacherStudentMethod, perturbation_noise
from .losses import softmax_mse


@register_method
class MeanTeacher(TeacherStudentMethod):
    """Mean Teacher: a student and its exponential-moving-average teacher.

    Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency
    targets improve semi-supervised deep learning results", NeurIPS 2017.

    The student learns from the labels and from the MSE between its softmax and the
    teacher's softmax on noisy unlabelled images; after each optimiser step the teacher's
    weights become an EMA of the student's. The student predicts.

    As SSL4MIS: lambda max 0.1 ramped up over the whole run, the teacher's input noise
    ``clamp(N(0, 0.1^2), -0.2, 0.2)`` in [0, 1] units (:func:`~.helpers.perturbation_noise`:
    scaled by each sample's intensity range, since images are z-scored here;
    ``"noise_scale": "absolute"`` is the earlier, 9 times weaker noise), and dropout in the
    backbone (``default_dropout`` 0.1, ``--dropout``; the reference's U-Net has encoder dropout
    0.05 to 0.5), active in the student and the teacher alike.
    """

    name = "mean_teacher"
    options = ("noise_std", "noise_clip", "noise_scale")
    default_dropout = 0.1

    def training_step(self, labelled, unlabelled, step):
        n_labelled = labelled["image"].shape[0]
        images = torch.cat([labelled["image"], unlabelled["image"]])
        logits = self.student(images)
        supervised = self.supervised_loss(logits[:n_labelled], labelled["label"])
        with torch.no_grad():
            teacher_logits = self.teacher(perturbation_noise(unlabelled["image"], self.settings))
        consistency = softmax_mse(logits[n_labelled:], teacher_logits)
        loss = supervised + step.consistency_weight * consistency
        return {"main": loss, "supervised": supervised.detach(), "consistency": consistency.detach()}
