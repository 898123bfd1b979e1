"""Bidirectional Copy-Paste (BCP)."""

from __future__ import annotations

import numpy as np
import torch

from ..postprocessing import keep_largest_component
from ..training.schedules import poly_lr
from .base import ema_update, register_method
from .helpers import TeacherStudentMethod, copy_paste, copy_paste_mask, extra, extra_choice, extra_flag
from .losses import weighted_supervised_loss


def bidirectional_copy_paste(labelled_images, labels, unlabelled_images, pseudo_labels, mask):
    """BCP's two mixed batches (mask = 1 inside the box):

    - inward: a labelled crop pasted into an unlabelled image,
      ``X_in = x_l * M + x_u * (1 - M)``, ``Y_in = y_l * M + y^_u * (1 - M)``;
    - outward: an unlabelled crop pasted into a labelled image (the other pairs),
      ``X_out = x_u' * M + x_l' * (1 - M)``, ``Y_out = y^_u' * M + y_l' * (1 - M)``.

    ``'`` pairs are the batches rolled by one. Returns ``(images_in, labels_in, images_out,
    labels_out)``.
    """
    other_l, other_y = labelled_images.roll(1, 0), labels.roll(1, 0)
    other_u, other_p = unlabelled_images.roll(1, 0), pseudo_labels.roll(1, 0)
    return (
        copy_paste(labelled_images, unlabelled_images, mask),
        copy_paste(labels, pseudo_labels, mask),
        copy_paste(other_u, other_l, mask),
        copy_paste(other_p, other_y, mask),
    )


def largest_component_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` (N, 1, *spatial) with, per image and class, only the largest connected
    component kept (BCP's pseudo-label clean-up, its code's ``LargestCC``)."""
    cleaned = [keep_largest_component(image[0].cpu().numpy()) for image in labels]
    return torch.from_numpy(np.stack(cleaned)).unsqueeze(1).to(labels.device)


@register_method
class BCP(TeacherStudentMethod):
    """Labelled and unlabelled images are copy-pasted into each other, both ways; the EMA
    teacher's pseudo-labels fill the unlabelled parts of the mixed labels.

    Bai, Chen, Li, Zhang & Wang, "Bidirectional Copy-Paste for Semi-Supervised Medical Image
    Segmentation", CVPR 2023.

    Stage 1 (first ``settings.extra["bcp_pretrain_fraction"]`` of the run, default 0.2): the
    student is pre-trained on labelled images copy-pasted into each other; the teacher copies
    the student, so self-training starts from the pre-trained model as in the paper. Each
    stage has its own poly learning-rate schedule, restarted at the full rate for
    self-training as the official code's new optimiser does (:meth:`learning_rate_factor`;
    ``"bcp_lr_schedule": "whole"`` keeps one decay over the run). The optimiser's state
    (momenta, AdamW's moment estimates) is kept across the stages by default, as every
    measurement here ran; ``"bcp_optimiser": "new"`` clears it when self-training starts, as
    the official code's newly built optimiser (:meth:`restarts_optimiser`). Measured (stop 28,
    ACDC, the same labelled batches): 0.755 and 0.752 at seeds 1337 and 1338 against 0.772 and
    0.781 keeping the state, so keeping it stays the default.
    Stage 2:
    :func:`bidirectional_copy_paste` with a box of 2/3 the image sides; loss = ``0.5 (CE +
    Dice)`` on the labelled region + alpha (0.5, ``"bcp_unlabelled_weight"``) times it on the
    pseudo-labelled region, for both mixed batches. Pseudo-labels are the teacher's argmax with
    only each class's largest connected component kept, as the official code's ``LargestCC``
    (on by default since it helped where measured: on ACDC at 1000 iterations, seed 1337, from
    0.538 to 0.547 Dice on whole slices and from 0.32 to 0.36 on 64 x 64 windows;
    ``"bcp_largest_component": false`` turns it off; the tables before issue 14 ran without
    it). The weight is fixed
    as in the paper: ``step.consistency_weight`` is not used. The batches are paired up to
    ``min(labelled, unlabelled)`` images.

    What the bench (``bench/label_efficiency.py``, small U-Net, CPU preset) measured over 3
    seeds: on LA (3D, 8 labelled, 2000 iterations) Dice 0.831, against 0.784 for supervised
    training on the same labels and 0.877 with every case labelled (51 % of the gap); on ACDC
    (2D, SSL4MIS's 7 labelled patients, whole slices, 3000 iterations) 0.772 against 0.695 and
    0.822 (61 %), the best of the methods that ran (with the first 7 patients by number, all
    dilated hearts, the tables before stop 17: 0.687 against 0.558, 49 %). BCP needs a pre-trained teacher: with 1000 ACDC
    iterations it closed 16 % of the gap, and on 64 x 64 windows, where a pasted box rarely
    holds a whole heart, it stayed below supervised training.
    """

    name = "bcp"
    options = ("bcp_pretrain_fraction", "bcp_largest_component", "bcp_unlabelled_weight", "bcp_lr_schedule",
               "bcp_optimiser")
    min_useful_iterations = {2: 1000, 3: 200}
    """Self-training from a teacher pre-trained for a fifth of a short run hurts. Measured with
    ``bench/time_budget.py`` (product defaults, one core, seed 1337; ``bench/results/time_budget.md``
    and ``time_budget_ssl4mis_split.md``): on ACDC (2D) BCP fell below supervised-only at 481
    iterations (Dice 0.41 against 0.49, a 2-minute budget, the first 7 patients labelled) and at
    550 (0.450 against 0.678, SSL4MIS's 7 patients), and was ahead at 1562 and 1678 (5 minutes);
    the label-efficiency bench had it ahead at 1000 (16 % of the gap). On LA (3D) it fell below
    at 102 iterations (0.54 against 0.71, SGD) and at 165 (0.715 against 0.746, a 2-minute
    budget, stop 21), was level or slightly below at 235 and 315 (0.739 against 0.750 with
    AdamW, 0.723 against 0.718 with SGD: within one seed's noise, sd 0.010) and ahead from 733
    on: the 3D bound lies between 165 and 235 (not measured finer). The demo's phantoms, an
    easier task, gain at 150 iterations, so its BCP run carries this warning."""

    def pretraining_iterations(self, total: int) -> int:
        return int(float(extra(self.settings, "bcp_pretrain_fraction", 0.2)) * total)

    def in_pretraining(self, step) -> bool:
        return step.iteration < self.pretraining_iterations(step.total)

    def learning_rate_factor(self, step, group="main"):
        """Poly decay over the pre-training, then again from the full rate over self-training."""
        if extra(self.settings, "bcp_lr_schedule", "restart") == "whole":
            return super().learning_rate_factor(step, group)
        pretraining = self.pretraining_iterations(step.total)
        if step.iteration < pretraining:
            return poly_lr(1.0, step.iteration, pretraining)
        return poly_lr(1.0, step.iteration - pretraining, step.total - pretraining)

    def restarts_optimiser(self, step, group="main"):
        new = extra_choice(self.settings, "bcp_optimiser", ("keep", "new")) == "new"
        return new and step.iteration == self.pretraining_iterations(step.total)

    def training_step(self, labelled, unlabelled, step):
        mask = copy_paste_mask(labelled["image"])
        if self.in_pretraining(step):
            return self.pretraining_step(labelled, mask)
        n = min(labelled["image"].shape[0], unlabelled["image"].shape[0])
        mixed = self.mixed_batch(labelled["image"][:n], labelled["label"][:n], unlabelled["image"][:n], mask)
        alpha = float(extra(self.settings, "bcp_unlabelled_weight", 0.5))
        inward, outward, _ = self.bidirectional_loss(self.student, mixed, mask, alpha)
        loss = inward + outward
        return {"main": loss, "inward": inward.detach(), "outward": outward.detach()}

    def mixed_batch(self, images, labels, u_images, mask):
        """:func:`bidirectional_copy_paste` of the labelled and unlabelled images, the teacher's
        pseudo-labels (cleaned up unless ``"bcp_largest_component": false``) in the unlabelled parts."""
        with torch.no_grad():
            pseudo = self.teacher(u_images).argmax(dim=1, keepdim=True)
        if extra_flag(self.settings, "bcp_largest_component", True):
            pseudo = largest_component_labels(pseudo)
        return bidirectional_copy_paste(images, labels, u_images, pseudo, mask)

    def bidirectional_loss(self, network, mixed, mask, alpha):
        """``network``'s mixed losses on the inward and the outward images (one pass each), and
        its logits on both, inward first."""
        images_in, labels_in, images_out, labels_out = mixed
        logits_in, logits_out = network(images_in), network(images_out)
        inward = self.mixed_loss(logits_in, labels_in, mask, alpha)
        outward = self.mixed_loss(logits_out, labels_out, 1.0 - mask, alpha)
        return inward, outward, torch.cat([logits_in, logits_out])

    def pretraining_step(self, labelled, mask):
        """Supervised copy-paste between labelled images (BCP's pre-training stage)."""
        images = copy_paste(labelled["image"], labelled["image"].roll(1, 0), mask)
        labels = copy_paste(labelled["label"], labelled["label"].roll(1, 0), mask)
        loss = self.supervised_loss(self.student(images), labels)
        return {"main": loss, "supervised": loss.detach()}

    def mixed_loss(self, logits, labels, labelled_region, alpha):
        """Loss on the labelled region plus ``alpha`` times the loss on the pseudo-labelled one."""
        weights = labelled_region.expand(logits.shape[0], *labelled_region.shape[1:])
        return (weighted_supervised_loss(logits, labels, weights, self.num_classes, batch=self.dice_batch)
                + alpha * weighted_supervised_loss(logits, labels, 1.0 - weights, self.num_classes,
                                                   batch=self.dice_batch))

    def after_optimiser_step(self, step):
        if self.in_pretraining(step):
            ema_update(self.teacher, self.student, 0.0, step.iteration)
        else:
            super().after_optimiser_step(step)
