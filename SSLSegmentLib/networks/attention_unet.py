"""Attention U-Net backbone (MONAI AttentionUnet)."""

from __future__ import annotations

from monai.networks.nets import AttentionUnet

from .registry import register_network
from .unet import UNET_CHANNELS


@register_network("attention_unet")
def build_attention_unet(dim: int, in_channels: int, out_channels: int, size: str):
    """Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.

    Same channels per size as ``unet``; strides 2, so spatial sizes divisible by 8 (tiny) or
    16 (small, base). MONAI's AttentionUnet uses batch normalisation (not configurable).
    """
    channels = UNET_CHANNELS[size]
    return AttentionUnet(
        spatial_dims=dim,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
    )
