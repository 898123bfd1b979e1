"""nnU-Net-style backbone (MONAI DynUNet)."""

from __future__ import annotations

from monai.networks.nets import DynUNet

from .registry import register_network

DYNUNET_FILTERS = {
    "tiny": (4, 8, 16, 32),
    "small": (16, 32, 64, 128, 256),
    "base": (32, 64, 128, 256, 320),
}


@register_network("dynunet")
def build_dynunet(dim: int, in_channels: int, out_channels: int, size: str):
    """Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
    image segmentation", Nature Methods 2021 (MONAI DynUNet).

    Kernels 3 at every level; strides 1 then 2 at each further level (isotropic patches,
    as nnU-Net plans for isotropic spacing); filters per size as ``unet`` (base capped at
    320 as nnU-Net). Spatial sizes divisible by 8 (tiny) or 16 (small, base). No deep
    supervision (one output). Instance norm with affine parameters, LeakyReLU 0.01.
    """
    filters = DYNUNET_FILTERS[size]
    strides = [1] + [2] * (len(filters) - 1)
    return DynUNet(
        spatial_dims=dim,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3] * len(filters),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
    )
