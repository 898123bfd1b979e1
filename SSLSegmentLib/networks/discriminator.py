"""Fully convolutional discriminator for adversarial segmentation (not a backbone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """Tells labelled-image predictions from unlabelled-image ones, given the softmax map
    AND the image, in 2D or 3D.

    Zhang et al., "Deep Adversarial Networks for Biomedical Image Segmentation Utilizing
    Unannotated Images", MICCAI 2017, as SSL4MIS's ``FCDiscriminator`` (2D) and
    ``FC3DDiscriminator``: the map and the image go through their own strided 4-convolution
    and are added; then strided 4-convolutions doubling the width (``layers`` strided
    convolutions in all: 4 as the reference, 16 times smaller), LeakyReLU 0.2, average pooling
    and a linear layer to one logit per sample. The pooling keeps a 2 x 2 grid in 2D (the
    reference's ``AvgPool2d(7)`` on its 256² patches) and pools globally in 3D (its
    ``AvgPool3d(6)`` on 96³). ``dropout``: channel dropout after every activation but the last,
    0.5 as the reference; active in training mode only. The activation (and dropout) after the
    addition is the 3D reference's; the 2D one has none, so its first two convolutions compose
    linearly, a defect kept one flag away (``stem_activation=False``).

    ``sees_image=False`` judges the map alone (no image branch): a departure from the
    references, for data sets where the labelled images can be told from the unlabelled ones by
    the image alone (``bench/dan_image_shortcut.py``), so that the verdict is about the map.

    ``layers=3`` is the discriminator of stops 12 to 15, whose DAN figures the bench reports
    (width up to 4x, global pooling in 2D too). Inputs smaller than ``2 ** layers`` along an
    axis are zero-padded to it.
    """

    def __init__(self, dim: int, num_classes: int, image_channels: int = 1, width: int = 64, dropout: float = 0.5,
                 layers: int = 4, stem_activation: bool = True, sees_image: bool = True):
        super().__init__()
        if layers < 2:
            raise ValueError(f"a discriminator needs at least 2 strided convolutions, got {layers}")
        conv = getattr(nn, f"Conv{dim}d")
        drop = getattr(nn, f"Dropout{dim}d")
        self.min_size = 2 ** layers
        self.map_conv = conv(num_classes, width, 4, stride=2, padding=1)
        self.image_conv = conv(image_channels, width, 4, stride=2, padding=1) if sees_image else None
        body: list[nn.Module] = []
        channels = width
        for layer in range(layers - 1):
            if layer or stem_activation:
                body += [nn.LeakyReLU(0.2), drop(dropout)]
            body.append(conv(channels, 2 * channels, 4, stride=2, padding=1))
            channels *= 2
        grid = 2 if dim == 2 and layers >= 4 else 1
        body += [nn.LeakyReLU(0.2), getattr(nn, f"AdaptiveAvgPool{dim}d")(grid), nn.Flatten(),
                 nn.Linear(channels * grid ** dim, 1)]
        self.body = nn.Sequential(*body)

    def forward(self, probabilities: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits of "this prediction comes from a labelled image"."""
        features = self.map_conv(self._padded(probabilities))
        if self.image_conv is not None:
            features = features + self.image_conv(self._padded(image))
        return self.body(features)[:, 0]

    def _padded(self, tensor: torch.Tensor) -> torch.Tensor:
        """Zero-padded at the end of each spatial axis shorter than ``min_size``."""
        short = [max(0, self.min_size - size) for size in reversed(tensor.shape[2:])]
        return F.pad(tensor, [p for s in short for p in (0, s)]) if any(short) else tensor
