"""V-Net backbone (MONAI VNet)."""

from __future__ import annotations

from monai.networks.nets import VNet

from ..errors import InputError
from .registry import register_network


@register_network("vnet")
def build_vnet(dim: int, in_channels: int, out_channels: int, size: str):
    """Milletari et al., "V-Net: Fully Convolutional Neural Networks for Volumetric Medical
    Image Segmentation", 3DV 2016 (the backbone of the LA / UA-MT recipes).

    Constraints of MONAI's VNet: its width is fixed (16 channels first, 256 at the bottom),
    so ``size`` is ignored; ``16 % in_channels == 0``; four down-samplings, so spatial sizes
    divisible by 16. Batch normalisation, ELU, dropout 0.5 in the deep blocks as in the paper
    (channel dropout matching ``dim``). 2D and 3D.
    """
    if 16 % in_channels != 0:
        raise InputError(f"vnet needs 16 % in_channels == 0, got {in_channels} input channels")
    return VNet(spatial_dims=dim, in_channels=in_channels, out_channels=out_channels, dropout_dim=dim)
