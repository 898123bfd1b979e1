"""Fully convolutional discriminator for adversarial segmentation (not a backbone)."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """Tells labelled-image predictions from unlabelled-image ones, given the softmax map
    AND the image, in 2D or 3D.

    Zhang et al., "Deep Adversarial Networks for Biomedical Image Segmentation Utilizing
    Unannotated Images", MICCAI 2017 (as SSL4MIS's FCDiscriminator: the map and the image go
    through their own strided convolution, are added, then strided 4-convolutions with
    LeakyReLU 0.2, global average pooling and a linear layer to one logit per sample).
    ``dropout``: channel dropout after every activation but the last, 0.5 as FCDiscriminator's
    ``Dropout2d/3d(0.5)``; active in training mode only.
    """

    def __init__(self, dim: int, num_classes: int, image_channels: int = 1, width: int = 64, dropout: float = 0.5):
        super().__init__()
        conv = getattr(nn, f"Conv{dim}d")
        drop = getattr(nn, f"Dropout{dim}d")
        self.map_conv = conv(num_classes, width, 4, stride=2, padding=1)
        self.image_conv = conv(image_channels, width, 4, stride=2, padding=1)
        self.body = nn.Sequential(
            nn.LeakyReLU(0.2),
            drop(dropout),
            conv(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            drop(dropout),
            conv(2 * width, 4 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            getattr(nn, f"AdaptiveAvgPool{dim}d")(1),
            nn.Flatten(),
            nn.Linear(4 * width, 1),
        )

    def forward(self, probabilities: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits of "this prediction comes from a labelled image"."""
        return self.body(self.map_conv(probabilities) + self.image_conv(image))[:, 0]
