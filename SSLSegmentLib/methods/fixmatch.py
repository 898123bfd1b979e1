"""FixMatch."""

from __future__ import annotations

import torch

from .base import register_method
from .helpers import TeacherStudentMethod, color_jitter, extra, random_flip_rot90
from .losses import confident_pseudo_label_loss


@register_method
class FixMatch(TeacherStudentMethod):
    """Pseudo-labels from a weakly augmented view supervise a strongly augmented one.

    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
    Confidence", NeurIPS 2020; settings of SSL4MIS's ``train_fixmatch_cta.py``.

    Weak view: random flips and rot90 over the spatial axes. Strong view: the SAME weak view
    plus :func:`~.helpers.color_jitter` (brightness and contrast x0.2 to 1.8, as the
    reference's ``ColorJitter(0.8, ...)``; ``"fixmatch_jitter"``), so the pseudo-labels stay
    aligned. Settings that follow the reference, each one option away from the paper's:

    - pseudo-labels from the EMA teacher's weak-view argmax (``"fixmatch_pseudo_labels":
      "teacher"``; ``"student"`` is the paper's single network);
    - loss ``0.5 (CE + Dice)`` against them, the supervised loss's form (``"fixmatch_loss":
      "ce"`` is the paper's cross-entropy alone);
    - threshold 0: every voxel, as the reference, whose ``conf_thresh`` is parsed but unused
      (``"fixmatch_threshold": 0.95`` is the paper's; voxels below it are IGNORED as in the
      paper, not mapped to background as the reference's other script does);
    - lambda max 0.1 with the whole-run ramp-up (``--consistency 1`` is the paper's lambda_u).
    """

    name = "fixmatch"
    options = ("fixmatch_threshold", "fixmatch_jitter", "fixmatch_loss", "fixmatch_pseudo_labels")

    def training_step(self, labelled, unlabelled, step):
        supervised = self.supervised_loss(self.student(labelled["image"]), labelled["label"])
        weak = random_flip_rot90(unlabelled["image"])
        jitter = float(extra(self.settings, "fixmatch_jitter", 0.8))
        strong = color_jitter(weak, brightness=jitter, contrast=jitter)
        labeller = self.teacher if extra(self.settings, "fixmatch_pseudo_labels", "teacher") == "teacher" else self.student
        with torch.no_grad():
            weak_probabilities = labeller(weak).softmax(dim=1)
        threshold = float(extra(self.settings, "fixmatch_threshold", 0.0))
        with_dice = extra(self.settings, "fixmatch_loss", "ce_dice") == "ce_dice"
        unsupervised, mask = confident_pseudo_label_loss(self.student(strong), weak_probabilities, threshold,
                                                         self.num_classes, with_dice, self.dice_batch)
        loss = supervised + step.consistency_weight * unsupervised
        return {"main": loss, "supervised": supervised.detach(), "unsupervised": unsupervised.detach(),
                "confident_fraction": mask.mean()}
