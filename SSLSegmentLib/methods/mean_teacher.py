"""Mean Teacher."""

from __future__ import annotations

import torch

from .base import register_method
from .helpers import TeacherStudentMethod
from .losses import softmax_mse


def teacher_noise(image: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """Gaussian input noise for the teacher, clipped, as in SSL4MIS: ``clamp(N(0, std^2), -clip, clip)``."""
    return image + torch.clamp(torch.randn_like(image) * std, -clip, clip)


@register_method
class MeanTeacher(TeacherStudentMethod):
    """Mean Teacher: a student and its exponential-moving-average teacher.

    Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency
    targets improve semi-supervised deep learning results", NeurIPS 2017.

    The student learns from the labels and from the MSE between its softmax and the
    teacher's softmax on noisy unlabelled images; after each optimiser step the teacher's
    weights become an EMA of the student's. The student predicts.
    """

    name = "mean_teacher"
    description = "Student + EMA teacher, softmax MSE consistency on noisy unlabelled images"
    reference = "Tarvainen & Valpola, NeurIPS 2017"

    def training_step(self, labelled, unlabelled, step):
        n_labelled = labelled["image"].shape[0]
        images = torch.cat([labelled["image"], unlabelled["image"]])
        logits = self.student(images)
        supervised = self.supervised_loss(logits[:n_labelled], labelled["label"])
        with torch.no_grad():
            teacher_logits = self.teacher(teacher_noise(unlabelled["image"]))
        consistency = softmax_mse(logits[n_labelled:], teacher_logits)
        loss = supervised + step.consistency_weight * consistency
        return {"main": loss, "supervised": supervised.detach(), "consistency": consistency.detach()}
