"""Swin transformer U-shaped backbone (MONAI SwinUNETR)."""

from __future__ import annotations

from monai.networks.nets import SwinUNETR

from ..errors import InputError
from .registry import register_network


def _require_einops() -> None:
    """MONAI's SwinUNETR needs the optional ``einops`` package at run time."""
    try:
        import einops  # noqa: F401
    except ImportError as error:
        raise InputError("network 'swin_unet' needs the einops package: pip install einops") from error

SWIN_SETTINGS = {
    "tiny": {"feature_size": 12, "depths": (1, 1, 1, 1)},
    "small": {"feature_size": 24, "depths": (2, 2, 2, 2)},
    "base": {"feature_size": 48, "depths": (2, 2, 2, 2)},
}


@register_network("swin_unet", channels_last=False)
def build_swin_unet(dim: int, in_channels: int, out_channels: int, size: str):
    """Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain
    Tumors in MRI Images", BrainLes 2021 (MONAI SwinUNETR), standing in for Cao et al.'s
    Swin-Unet used by CTCT (Luo et al., MIDL 2022). 2D and 3D.

    Spatial sizes must be divisible by 32 (patch 2, four patch mergings). Feature size
    12 / 24 / 48 for tiny / small / base; window 7 (MONAI shrinks it on small inputs).
    Convolutional blocks use group norm (4 groups) instead of MONAI's default instance norm,
    which fails in training (and zeroes features) when the 1/32 bottleneck is 1 voxel wide,
    e.g. on 32x32 patches.
    Randomly initialised: no pretrained weights. Needs ``einops`` (a MONAI optional
    dependency).
    """
    _require_einops()
    return SwinUNETR(
        spatial_dims=dim,
        in_channels=in_channels,
        out_channels=out_channels,
        norm_name=("group", {"num_groups": 4}),
        **SWIN_SETTINGS[size],
    )
