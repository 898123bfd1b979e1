"""Adaptive Bidirectional Displacement (ABD), on Bidirectional Copy-Paste."""

from __future__ import annotations

import copy

import torch

from .base import register_method
from .bcp import BCP
from .helpers import color_jitter, copy_paste, copy_paste_mask, cutmix_boxes, extra, intensity_range
from .cps import dice_to_argmax


def cutout_strong_view(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ABD's strong view: with probability 0.5 per image a box of 2 % to 40 % of it (sides'
    aspect within [0.3, 1/0.3], :func:`~.helpers.cutmix_boxes`) filled with voxels drawn from
    the image's minimum and maximum, its labels set to background (the official code's
    ``cutout_gray``), then brightness and contrast jitter x0.2 to 1.8 (:func:`~.helpers.color_jitter`,
    its ``ColorJitter(0.8, 0.8, ...)``). Returns ``(images, labels)``."""
    boxes = cutmix_boxes(images)
    axes = tuple(range(1, images.ndim))
    salt_and_pepper = images.amin(dim=axes, keepdim=True) + intensity_range(images) * (torch.rand_like(images) < 0.5)
    erased = copy_paste(salt_and_pepper, images, boxes)
    return color_jitter(erased), copy_paste(torch.zeros_like(labels), labels, boxes)


def to_cells(images: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, C, *spatial)`` cut into ``grid`` equal parts along each spatial axis:
    ``(B, grid ** d, C, *cell)``, the cells in row-major order."""
    batch, channels, spatial = images.shape[0], images.shape[1], images.shape[2:]
    if any(size % grid for size in spatial):
        raise ValueError(f"abd_grid={grid} must divide the patch size {tuple(spatial)}")
    split = [images.shape[0], channels] + [n for size in spatial for n in (grid, size // grid)]
    d = len(spatial)
    order = [0] + [2 + 2 * axis for axis in range(d)] + [1] + [3 + 2 * axis for axis in range(d)]
    cells = images.reshape(split).permute(order)
    return cells.reshape(batch, grid ** d, channels, *(size // grid for size in spatial))


def from_cells(cells: torch.Tensor, grid: int) -> torch.Tensor:
    """The inverse of :func:`to_cells`."""
    batch, channels, cell = cells.shape[0], cells.shape[2], cells.shape[3:]
    d = len(cell)
    unfolded = cells.reshape(batch, *([grid] * d), channels, *cell)
    order = [0, d + 1] + [n for axis in range(d) for n in (1 + axis, d + 2 + axis)]
    return unfolded.permute(order).reshape(batch, channels, *(grid * size for size in cell))


def closest_confident_cell(confidence: torch.Tensor, distributions: torch.Tensor, target: torch.Tensor,
                           top: int) -> torch.Tensor:
    """Among the ``top`` most confident cells (``confidence`` (G,)), the one whose mean class
    distribution (``distributions`` (G, K)) is closest to ``target`` (K,), by ``KL(target || cell)``."""
    candidates = confidence.topk(min(top, confidence.numel())).indices
    chosen = distributions[candidates]
    divergence = (target * (target.clamp_min(1e-12).log() - chosen.clamp_min(1e-12).log())).sum(dim=1)
    return candidates[divergence.argmin()]


def cell_statistics(logits: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and cell: the confidence, the mean over its voxels of the highest class
    probability ``(B, G)``, and the class distribution, the softmax of its mean logits ``(B, G, K)``."""
    logits = logits.detach().float()
    confidence = to_cells(logits.softmax(dim=1).amax(dim=1, keepdim=True), grid).flatten(2).mean(dim=2)
    return confidence, to_cells(logits, grid).flatten(3).mean(dim=3).softmax(dim=2)


def bidirectional_displacement(images_1: torch.Tensor, images_2: torch.Tensor, logits_1: torch.Tensor,
                               logits_2: torch.Tensor, grid: int = 4, top: int = 4,
                               kl_probability: float = 0.5) -> torch.Tensor:
    """ABD-R (Chi et al., CVPR 2024, the official ``ABD_R_BCP``): each image of the two views is
    cut into ``grid`` cells per axis, and each cell's confidence is the mean over its voxels of
    the network's highest class probability on that view. In each image of view 1, the least
    confident cell is replaced by a confident cell of view 2's image, and the other way round.
    With probability ``kl_probability`` the donor is, among the other view's ``top`` most
    confident cells, the one whose class distribution (softmax of its mean logits) is closest to
    the replaced cell's; otherwise it is the other view's most confident cell. Donor cells move
    to the replaced cell's place. Returns the displaced views one after the other, ``(2B, ...)``."""
    cells_1, cells_2 = to_cells(images_1, grid), to_cells(images_2, grid)
    confidence_1, distributions_1 = cell_statistics(logits_1, grid)
    confidence_2, distributions_2 = cell_statistics(logits_2, grid)
    displaced_1, displaced_2 = cells_1.clone(), cells_2.clone()
    for i in range(images_1.shape[0]):
        least_1, least_2 = confidence_1[i].argmin(), confidence_2[i].argmin()
        if float(torch.rand(())) < kl_probability:
            donor_2 = closest_confident_cell(confidence_2[i], distributions_2[i], distributions_1[i, least_1], top)
            donor_1 = closest_confident_cell(confidence_1[i], distributions_1[i], distributions_2[i, least_2], top)
        else:
            donor_2, donor_1 = confidence_2[i].argmax(), confidence_1[i].argmax()
        displaced_1[i, least_1] = cells_2[i, donor_2]
        displaced_2[i, least_2] = cells_1[i, donor_1]
    return torch.cat([from_cells(displaced_1, grid), from_cells(displaced_2, grid)])


@register_method
class ABD(BCP):
    """BCP with two students that teach each other on bidirectionally displaced images.

    Chi, Pang, Zhang & Liu, "Adaptive Bidirectional Displacement for Semi-Supervised Medical
    Image Segmentation", CVPR 2024; the official code's BCP variant (``train_ACDC_BCP.py``):

    - pre-training as :class:`~.bcp.BCP` (the first network alone, on labelled images
      copy-pasted into each other); the EMA teacher and the second network start from it;
    - self-training: a weak view (the batch as sampled) and a strong view
      (:func:`cutout_strong_view`) of the labelled and unlabelled images. The teacher
      pseudo-labels both unlabelled views (largest component per class, as BCP). The first
      network learns BCP's mixed loss on the weak view, the second on the strong view, with
      the same box;
    - each network also learns the other's argmax on the mixed images (soft Dice), and on the
      two views after :func:`bidirectional_displacement` (ABD-R), which both networks predict;
    - loss per network ``L_bcp + L_cross(mixed) + L_cross(displaced)``, fixed weights as the
      official code (``step.consistency_weight`` is not used); the teacher follows the first
      network, which predicts.

    ``"abd_grid"``: cells per axis (default 4, the reference's 64-pixel cells of 256 x 256
    slices; the patch size must be a multiple); ``"abd_top_cells"`` (4) and
    ``"abd_kl_probability"`` (0.5) as the reference. The official code is 2D; in 3D the grid
    cuts every axis alike (4 x 4 x 4 cells). BCP's options apply.

    A step runs each network on three times BCP's images (the mixed batch and the two displaced
    views): on the bench's ACDC preset 1.0 s per iteration against BCP's 0.22 (one thread each,
    two runs at a time).

    Measured (``bench/label_efficiency.py``, ACDC, SSL4MIS's 7 labelled patients, 3000
    iterations, the same labelled batches as supervised-only; stop 29 of
    ``bench/results/label_efficiency_after_reference_settings.md``): 0.630 and 0.417 Dice at
    seeds 1337 and 1338, against 0.700 and 0.674 for supervised-only and 0.772 and 0.781 for
    BCP. Below supervised-only in every class, the right ventricle collapsing at seed 1338
    (0.13). The reference trains 10,000 pre-training and 30,000 self-training iterations of
    24 slices of 256 x 256; at this short preset the two networks teach each other from a
    weak start.
    """

    name = "abd"
    options = BCP.options + ("abd_grid", "abd_top_cells", "abd_kl_probability")
    ddp_find_unused_parameters = True  # the second network waits out the pre-training
    min_useful_iterations = BCP.min_useful_iterations
    """BCP's bounds, set by its pre-training, which ABD shares (not measured for ABD itself)."""

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.second = copy.deepcopy(self.student)
        self.grid = int(extra(settings, "abd_grid", 4))
        self.top = int(extra(settings, "abd_top_cells", 4))
        self.kl_probability = float(extra(settings, "abd_kl_probability", 0.5))
        if self.grid < 2 or self.top < 1 or not 0.0 <= self.kl_probability <= 1.0:
            raise ValueError("abd_grid must be 2 or more, abd_top_cells 1 or more and abd_kl_probability "
                             f"within [0, 1]; got {self.grid}, {self.top}, {self.kl_probability}")

    def backbones(self):
        return [*super().backbones(), self.second]

    def training_step(self, labelled, unlabelled, step):
        mask = copy_paste_mask(labelled["image"])
        if self.in_pretraining(step):
            return self.pretraining_step(labelled, mask)
        n = min(labelled["image"].shape[0], unlabelled["image"].shape[0])
        images, labels, u_images = labelled["image"][:n], labelled["label"][:n], unlabelled["image"][:n]
        strong, strong_labels = cutout_strong_view(images, labels)
        u_strong, _ = cutout_strong_view(u_images, torch.zeros_like(labels))
        weak_mix = self.mixed_batch(images, labels, u_images, mask)
        strong_mix = self.mixed_batch(strong, strong_labels, u_strong, mask)
        alpha = float(extra(self.settings, "bcp_unlabelled_weight", 0.5))
        *bcp_1, logits_1 = self.bidirectional_loss(self.student, weak_mix, mask, alpha)
        *bcp_2, logits_2 = self.bidirectional_loss(self.second, strong_mix, mask, alpha)
        cross_mixed = self.cross_dice(logits_1, logits_2) + self.cross_dice(logits_2, logits_1)
        displaced = bidirectional_displacement(torch.cat(weak_mix[::2]), torch.cat(strong_mix[::2]), logits_1, logits_2,
                                               self.grid, self.top, self.kl_probability)
        displaced_1, displaced_2 = self.student(displaced), self.second(displaced)
        cross_displaced = self.cross_dice(displaced_1, displaced_2) + self.cross_dice(displaced_2, displaced_1)
        bcp = sum(bcp_1) + sum(bcp_2)
        loss = bcp + cross_mixed + cross_displaced
        return {"main": loss, "bcp": bcp.detach() / 2, "cross_mixed": cross_mixed.detach() / 2,
                "cross_displaced": cross_displaced.detach() / 2}

    def cross_dice(self, logits, other_logits):
        return dice_to_argmax(logits, other_logits, self.num_classes, self.dice_batch)

    def after_optimiser_step(self, step):
        super().after_optimiser_step(step)
        if self.in_pretraining(step):  # the second network starts self-training from the pre-trained one
            with torch.no_grad():
                for second, first in zip(self.second.state_dict().values(), self.student.state_dict().values()):
                    second.copy_(first)

