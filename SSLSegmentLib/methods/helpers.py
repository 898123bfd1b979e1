"""Pieces shared by several methods: base classes for teacher-student and two-network
methods, augmentations on tensors, mixing and copy-paste. No method is registered here."""

from __future__ import annotations

import math
from typing import Any

import torch
from .base import Method, ema_update, frozen_copy

INPUT_CHANNELS = 1
"""Batches carry one image channel (``PatchSampler.sample`` gives ``(count, 1, *patch)``)."""


def extra(settings, key: str, default: Any) -> Any:
    """A method-specific setting from ``settings.extra`` with its default."""
    return settings.extra.get(key, default)


def extra_flag(settings, key: str, default: bool) -> bool:
    """A method-specific yes/no setting: JSON ``true`` or ``false``. Anything else (the text
    "False", 0) is an error naming the key, not a truthy surprise."""
    value = settings.extra.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"method option {key!r} must be true or false, got {value!r}")
    return value


def extra_choice(settings, key: str, choices: tuple[str, ...]) -> str:
    """A method-specific setting that must be one of ``choices`` (the first is the default);
    another value is an error naming the key and the choices."""
    value = settings.extra.get(key, choices[0])
    if value not in choices:
        raise ValueError(f"{key} must be {' or '.join(map(str, choices))}, not {value!r}")
    return value


def joined_images(labelled: dict, unlabelled: dict) -> tuple[torch.Tensor, int]:
    """Labelled then unlabelled images in one batch, and the number of labelled ones."""
    return torch.cat([labelled["image"], unlabelled["image"]]), labelled["image"].shape[0]


class TeacherStudentMethod(Method):
    """A student and its EMA teacher (Tarvainen & Valpola, NeurIPS 2017); the student
    predicts, the teacher follows it after each optimiser step."""

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.student = network_factory()
        self.teacher = frozen_copy(self.student)

    def after_optimiser_step(self, step):
        ema_update(self.teacher, self.student, self.settings.ema_decay, step.iteration)

    def backbones(self):
        return [self.student, self.teacher]


class TwoNetworkMethod(Method):
    """Two networks trained together; the first (``student``) predicts.

    ``separate_optimisers = True`` gives each network its own parameter group (``"main"``
    and ``"second"``), which only works when each network's loss has no gradient path into
    the other (pseudo-labels from an argmax). Otherwise one group holds both.
    """

    separate_optimisers = True

    def build_networks(self, second_name: str | None = None) -> None:
        self.student = self.network_factory()
        self.second = self.network_factory(name=second_name) if second_name else self.network_factory()

    def parameter_groups(self):
        if not self.separate_optimisers:
            return super().parameter_groups()
        return {"main": list(self.student.parameters()), "second": list(self.second.parameters())}

    def backbones(self):
        return [self.student, self.second]

    def mutual_losses(self, logits, labelled, n_labelled, weight, pseudo_loss, term):
        """One loss per group for cross-teaching methods: each network's supervised loss plus
        ``weight * pseudo_loss(its logits, the other's logits)`` (the other's are detached)."""
        losses = {}
        for group, mine, other in (("main", logits[0], logits[1]), ("second", logits[1], logits[0])):
            supervised = self.supervised_loss(mine[:n_labelled], labelled["label"])
            unsupervised = pseudo_loss(mine, other.detach())
            losses[group] = supervised + weight * unsupervised
            losses[f"{group}_supervised"] = supervised.detach()
            losses[f"{group}_{term}"] = unsupervised.detach()
        return losses


# --- augmentations on (B, C, *spatial) tensors -------------------------------------------------
def random_flip_rot90(images: torch.Tensor) -> torch.Tensor:
    """Per sample: a flip along each spatial axis with probability 1/2, then a rotation by
    k*90 degrees in one randomly chosen plane of two equally long spatial axes (if any)."""
    return torch.stack([_flip_rot90(sample) for sample in images])


def _flip_rot90(sample: torch.Tensor) -> torch.Tensor:
    spatial_axes = list(range(1, sample.ndim))
    flips = [axis for axis in spatial_axes if torch.rand(()) < 0.5]
    if flips:
        sample = sample.flip(flips)
    planes = [(a, b) for a in spatial_axes for b in spatial_axes if a < b and sample.shape[a] == sample.shape[b]]
    if planes:
        plane = planes[int(torch.randint(len(planes), ()))]
        sample = sample.rot90(int(torch.randint(4, ())), plane)
    return sample


def intensity_range(images: torch.Tensor) -> torch.Tensor:
    """Per sample ``max - min`` over channels and space, ``(B, 1, ...)``: what SSL4MIS's min-max
    normalisation to [0, 1] divides by."""
    axes = tuple(range(1, images.ndim))
    return (images.amax(dim=axes, keepdim=True) - images.amin(dim=axes, keepdim=True)).clamp_min(1e-6)


def perturbation_noise(images: torch.Tensor, settings) -> torch.Tensor:
    """The teacher's input noise of Mean Teacher and UA-MT: SSL4MIS's ``clamp(N(0, 0.1^2), -0.2,
    0.2)`` (``"noise_std"``, ``"noise_clip"``) on images min-max scaled to [0, 1].

    Images are z-scored here, so by default (``"noise_scale": "range"``, the reference's
    perturbation) the noise is multiplied by each sample's intensity range, i.e. added in the
    reference's [0, 1] units. ``"std"`` scales by the sample's standard deviation instead;
    ``"absolute"`` adds it in z-score units as before, about 9 times weaker than the reference.
    """
    std, clip = float(extra(settings, "noise_std", 0.1)), float(extra(settings, "noise_clip", 0.2))
    scale = extra_choice(settings, "noise_scale", ("range", "std", "absolute"))
    noise = torch.clamp(torch.randn_like(images) * std, -clip, clip)
    if scale == "range":
        return images + noise * intensity_range(images)
    if scale == "std":
        return images + noise * images.std(dim=tuple(range(1, images.ndim)), keepdim=True)
    return images + noise  # absolute


def color_jitter(images: torch.Tensor, brightness: float = 0.8, contrast: float = 0.8) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast)`` on grey images, as SSL4MIS's FixMatch
    strong view (``ColorJitter(0.8, 0.8, 0.8, 0.2)``; saturation and hue do nothing to one
    channel): per sample, in the reference's [0, 1] units (min-max of the sample), brightness
    ``x * b`` and contrast ``(x - mean) * c + mean`` with ``b, c ~ U(1-0.8, 1+0.8)`` = 0.2..1.8,
    in random order, each clamped to [0, 1]; then back to the input's units."""
    shape = (images.shape[0],) + (1,) * (images.ndim - 1)
    low = images.amin(dim=tuple(range(1, images.ndim)), keepdim=True)
    span = intensity_range(images)
    unit = (images - low) / span
    factors = {"b": torch.empty(shape, device=images.device, dtype=images.dtype).uniform_(1 - brightness, 1 + brightness),
               "c": torch.empty(shape, device=images.device, dtype=images.dtype).uniform_(1 - contrast, 1 + contrast)}
    for op in (("b", "c") if torch.rand(()) < 0.5 else ("c", "b")):
        if op == "b":
            unit = (unit * factors["b"]).clamp(0, 1)
        else:
            mean = unit.mean(dim=tuple(range(1, images.ndim)), keepdim=True)
            unit = ((unit - mean) * factors["c"] + mean).clamp(0, 1)
    return unit * span + low


def cutmix_boxes(images: torch.Tensor, p: float = 0.5, area=(0.02, 0.4), ratio: float = 0.3) -> torch.Tensor:
    """``(B, 1, *spatial)`` masks, per sample with probability ``p`` a box (1 inside) covering a
    fraction ``U(area)`` of the image, else empty: UniMatch's ``obtain_cutmix_box`` (after
    CutMix, Yun et al. ICCV 2019) for any number of axes. The sides' aspect ratios lie within
    ``[ratio, 1 / ratio]`` (the reference's 0.3), the box lies inside the image."""
    spatial = images.shape[2:]
    masks = torch.zeros((images.shape[0], 1, *spatial), device=images.device, dtype=images.dtype)
    spread = math.log(1.0 / ratio) / 2
    for mask in masks:
        if float(torch.rand(())) >= p:
            continue
        fraction = float(torch.empty(()).uniform_(*area))
        log_aspect = torch.empty(len(spatial)).uniform_(-spread, spread)
        log_aspect -= log_aspect.mean()  # the sides' product keeps the drawn area
        box = []
        for size, aspect in zip(spatial, log_aspect.exp().tolist()):
            length = min(size, max(1, int(size * fraction ** (1 / len(spatial)) * aspect)))
            start = int(torch.randint(size - length + 1, ()))
            box.append(slice(start, start + length))
        mask[(slice(None), *box)] = 1.0
    return masks


# --- mixing --------------------------------------------------------------------------------------
def interpolate(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * a + (1 - lam) * b`` (mixup, Zhang et al. ICLR 2018)."""
    return lam * a + (1.0 - lam) * b


def copy_paste_mask(reference: torch.Tensor, ratio: float = 2.0 / 3.0) -> torch.Tensor:
    """``(1, 1, *spatial)`` mask, 1 inside a randomly placed box whose sides are ``ratio`` of
    the image's, 0 elsewhere (BCP, Bai et al. CVPR 2023, beta = 2/3)."""
    spatial = reference.shape[2:]
    mask = torch.zeros((1, 1, *spatial), device=reference.device, dtype=reference.dtype)
    box = []
    for size in spatial:
        length = max(1, int(round(size * ratio)))
        start = int(torch.randint(size - length + 1, ()))
        box.append(slice(start, start + length))
    mask[(slice(None), slice(None), *box)] = 1.0
    return mask


def copy_paste(inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``inside`` where ``mask`` is 1 and ``outside`` elsewhere (images or label maps)."""
    if inside.dtype.is_floating_point:
        return inside * mask + outside * (1.0 - mask)
    return torch.where(mask.bool(), inside, outside)

