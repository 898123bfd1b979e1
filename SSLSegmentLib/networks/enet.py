"""ENet, written here because MONAI has none.

Paszke, Chaurasia, Kim & Culurciello, "ENet: A Deep Neural Network Architecture for
Real-Time Semantic Segmentation", arXiv:1606.02147 (2016). SSL4MIS ships a 2D ENet; this one
is dimension-generic (every layer is built for ``dim`` = 2 or 3).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .registry import register_network

ENET_SIZES = {
    # widths (initial block, stage 1, stage 2/3), stage-2 bottleneck sequence, repeat it as stage 3
    "tiny": ((8, 16, 32), ("regular", "dilated2", "asymmetric", "dilated4"), False),
    "small": ((16, 64, 128), ("regular", "dilated2", "asymmetric", "dilated4",
                              "regular", "dilated8", "asymmetric", "dilated16"), True),
    "base": ((32, 128, 256), ("regular", "dilated2", "asymmetric", "dilated4",
                              "regular", "dilated8", "asymmetric", "dilated16"), True),
}


def _layer(kind: str, dim: int):
    """``nn.Conv2d`` / ``nn.Conv3d`` etc. by dimension."""
    return getattr(nn, f"{kind}{dim}d")


def _conv_bn_prelu(dim, cin, cout, kernel=1, stride=1, padding=0, dilation=1):
    return nn.Sequential(
        _layer("Conv", dim)(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        _layer("BatchNorm", dim)(cout),
        nn.PReLU(cout),
    )


def _middle_conv(dim: int, channels: int, kind: str) -> nn.Module:
    """The bottleneck's main convolution: regular 3, dilated 3 or asymmetric 5 (one 5-long
    kernel per axis: 5x1 then 1x5 in 2D, 5x1x1, 1x5x1, 1x1x5 in 3D)."""
    if kind == "asymmetric":
        layers = []
        for axis in range(dim):
            kernel = [1] * dim
            kernel[axis] = 5
            padding = [k // 2 for k in kernel]
            layers.append(_layer("Conv", dim)(channels, channels, kernel, padding=padding, bias=False))
        return nn.Sequential(*layers, _layer("BatchNorm", dim)(channels), nn.PReLU(channels))
    dilation = int(kind[len("dilated"):]) if kind.startswith("dilated") else 1
    return _conv_bn_prelu(dim, channels, channels, 3, padding=dilation, dilation=dilation)


class InitialBlock(nn.Module):
    """Strided 3-conv concatenated with max-pooling of the input (ENet Fig. 2a)."""

    def __init__(self, dim, in_channels, out_channels):
        super().__init__()
        if out_channels <= in_channels:
            raise InputError(f"enet: {in_channels} input channels is too many for this size")
        self.conv = _layer("Conv", dim)(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = _layer("MaxPool", dim)(2)
        self.norm_act = nn.Sequential(_layer("BatchNorm", dim)(out_channels), nn.PReLU(out_channels))

    def forward(self, x):
        return self.norm_act(torch.cat([self.conv(x), self.pool(x)], dim=1))


class Bottleneck(nn.Module):
    """Regular / dilated / asymmetric residual bottleneck (ENet Fig. 2b): 1x1 projection,
    main convolution, 1x1 expansion, spatial dropout, added to the identity."""

    def __init__(self, dim, channels, kind="regular", dropout=0.1):
        super().__init__()
        inner = max(channels // 4, 1)
        self.branch = nn.Sequential(
            _conv_bn_prelu(dim, channels, inner),
            _middle_conv(dim, inner, kind),
            _layer("Conv", dim)(inner, channels, 1, bias=False),
            _layer("BatchNorm", dim)(channels),
            _layer("Dropout", dim)(dropout),
        )
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return self.act(x + self.branch(x))


class DownBottleneck(nn.Module):
    """Down-sampling bottleneck: max-pool (indices kept for unpooling) and zero-padded
    channels on the main branch, 2x2 stride-2 projection on the other."""

    def __init__(self, dim, cin, cout, dropout=0.1):
        super().__init__()
        inner = max(cout // 4, 1)
        self.pool = _layer("MaxPool", dim)(2, return_indices=True)
        self.extra_channels = cout - cin
        self.branch = nn.Sequential(
            _conv_bn_prelu(dim, cin, inner, kernel=2, stride=2),
            _conv_bn_prelu(dim, inner, inner, 3, padding=1),
            _layer("Conv", dim)(inner, cout, 1, bias=False),
            _layer("BatchNorm", dim)(cout),
            _layer("Dropout", dim)(dropout),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x):
        main, indices = self.pool(x)
        padding = main.new_zeros((main.shape[0], self.extra_channels, *main.shape[2:]))
        return self.act(torch.cat([main, padding], dim=1) + self.branch(x)), indices


class UpBottleneck(nn.Module):
    """Up-sampling bottleneck: 1x1 conv + max-unpooling with the encoder's indices on the
    main branch, transposed convolution on the other."""

    def __init__(self, dim, cin, cout, dropout=0.1):
        super().__init__()
        inner = max(cin // 4, 1)
        self.main = nn.Sequential(_layer("Conv", dim)(cin, cout, 1, bias=False), _layer("BatchNorm", dim)(cout))
        self.unpool = _layer("MaxUnpool", dim)(2)
        self.branch = nn.Sequential(
            _conv_bn_prelu(dim, cin, inner),
            _layer("ConvTranspose", dim)(inner, inner, 2, stride=2, bias=False),
            _layer("BatchNorm", dim)(inner),
            nn.PReLU(inner),
            _layer("Conv", dim)(inner, cout, 1, bias=False),
            _layer("BatchNorm", dim)(cout),
            _layer("Dropout", dim)(dropout),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x, indices):
        main = self.unpool(self.main(x), indices)
        return self.act(main + self.branch(x))


class ENet(nn.Module):
    """ENet (Paszke et al. 2016) for ``dim`` = 2 or 3: initial block, stage 1 (down +
    4 regular, dropout 0.01), stage 2 (down + regular/dilated/asymmetric sequence,
    dropout 0.1), stage 3 (the sequence again, without down-sampling), stages 4-5
    (unpooling decoder), full-resolution transposed convolution. Batch norm, PReLU.
    Spatial sizes divisible by 8."""

    def __init__(self, dim, in_channels, out_channels, widths=(16, 64, 128), sequence=(), repeat=True):
        super().__init__()
        w0, w1, w2 = widths
        self.initial = InitialBlock(dim, in_channels, w0)
        self.down1 = DownBottleneck(dim, w0, w1, dropout=0.01)
        self.stage1 = nn.Sequential(*[Bottleneck(dim, w1, dropout=0.01) for _ in range(4)])
        self.down2 = DownBottleneck(dim, w1, w2)
        stages = list(sequence) * (2 if repeat else 1)
        self.stage23 = nn.Sequential(*[Bottleneck(dim, w2, kind) for kind in stages])
        self.up4 = UpBottleneck(dim, w2, w1)
        self.stage4 = nn.Sequential(Bottleneck(dim, w1), Bottleneck(dim, w1))
        self.up5 = UpBottleneck(dim, w1, w0)
        self.stage5 = Bottleneck(dim, w0)
        self.full_conv = _layer("ConvTranspose", dim)(w0, out_channels, 2, stride=2)

    def forward(self, x):
        x = self.initial(x)
        x, indices1 = self.down1(x)
        x = self.stage1(x)
        x, indices2 = self.down2(x)
        x = self.stage23(x)
        x = self.stage4(self.up4(x, indices2))
        x = self.stage5(self.up5(x, indices1))
        return self.full_conv(x)


@register_network("enet")
def build_enet(dim: int, in_channels: int, out_channels: int, size: str):
    """ENet (Paszke et al., arXiv:1606.02147, 2016), written here as MONAI lacks it; 2D and 3D.

    Widths (initial, stage 1, stages 2-3): tiny (8, 16, 32) with a short stage 2 and no
    stage 3; small (16, 64, 128) = the paper; base (32, 128, 256). Spatial sizes divisible
    by 8.
    """
    widths, sequence, repeat = ENET_SIZES[size]
    return ENet(dim, in_channels, out_channels, widths, sequence, repeat)
