"""U-Net backbone (MONAI's residual UNet)."""

from __future__ import annotations

from monai.networks.nets import UNet

from .registry import register_network

UNET_CHANNELS = {
    "tiny": (4, 8, 16, 32),
    "small": (16, 32, 64, 128, 256),
    "base": (32, 64, 128, 256, 512),
}

INSTANCE_NORM = ("instance", {"affine": True})
"""Instance normalisation (nnU-Net's choice): independent of the batch, so it behaves the
same with 2+2 batches, at inference on one case, and in an EMA teacher."""


@register_network("unet")
def build_unet(dim: int, in_channels: int, out_channels: int, size: str, dropout: float = 0.0):
    """Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
    MICCAI 2015; MONAI's variant with residual units (Kerfoot et al., STACOM 2018).

    Channels by size: tiny (4, 8, 16, 32), small (16, 32, 64, 128, 256) as SSL4MIS's UNet,
    base (32 ... 512). Strides 2: spatial sizes divisible by 8 (tiny) or 16 (small, base).
    Normalisation: instance norm with affine parameters. ``dropout``: MONAI's dropout after the
    normalisation of every convolution (SSL4MIS's UNet has encoder dropout 0.05 to 0.5); it adds
    no parameter, so weights load into the network with or without it.
    """
    channels = UNET_CHANNELS[size]
    return UNet(
        spatial_dims=dim,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
        norm=INSTANCE_NORM,
        dropout=dropout or None,
    )
