"""Wrappers that add outputs (or dropout) to ANY backbone through forward hooks.

How the hooks choose feature maps
---------------------------------
At construction, a wrapper runs the backbone once on a probe input (eval mode, no
gradient) whose first two axes differ (2D 32x64, 3D 32x64x32 by default: divisible by
32 as every registered backbone needs), with a temporary hook on every sub-module. A
decoder *level* ``k`` is resolution ``1/2^k`` of the input. For each requested level the
wrapper keeps the sub-module whose tensor output ``(B, C, *spatial)`` has exactly the probe's
spatial size divided by ``2^k`` and that finished LAST in execution order, skipping modules
nested inside a block that receives that resolution and outputs another (the projection
inside an up-sampling block is not a decoder map): in an
encoder-decoder that is the decoder's feature map at that resolution (for MONAI's UNet the
skip concatenation that feeds the next up-sampling; for DynUNet / SwinUNETR the up-block;
for ENet the stage after the unpooling). Anisotropic probe axes make channel-last tensors
(transformer blocks) and attention maps fail the shape test. Permanent hooks then sit on the
chosen modules; they only record (or perturb) while the wrapper's own ``forward`` runs, so
calling the bare backbone (e.g. as the inference network) is unaffected. The hooks are bound
to the wrapper: deep-copy the wrapper (not the bare backbone) and save ``state_dict``s, not
pickled modules.

Wrappers:
- :class:`PyramidOutputs` (URPC, Luo et al., MICCAI 2021 / MedIA 2022): main logits + 1x1-conv
  heads on decoder levels 1, 2, 3 (or the URPC code's 3x3 heads on the decoder blocks),
  perturbed as in the URPC code (dropout 0.5 at 1/8, feature dropout at 1/4, feature noise at
  1/2), upsampled to the input size.
- :class:`AuxiliaryDecoders` (CCT, Ouali et al., CVPR 2020): main logits + K auxiliary heads
  on perturbed copies of one decoder feature map.
- :class:`WithDropout` (R-Drop, Wu et al. NeurIPS 2021): ``nn.Dropout`` on the decoder feature
  maps of levels 1-3 in training mode (the hooks replace the module outputs), plain logits.

Multi-output wrappers return a list of logits (main first) in training mode and only the
main logits in eval mode, so inference code sees plain logits.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from monai.networks.layers import SkipConnection
from torch import nn

DEFAULT_PROBE = {2: (32, 64), 3: (32, 64, 32)}


# --- perturbations of feature maps ----------------------------------------------------------
class FeatureNoise(nn.Module):
    """Multiplicative uniform noise ``x * (1 + U(-m, m))``, one noise map shared by the batch
    (CCT, Ouali et al. CVPR 2020; m = 0.3)."""

    def __init__(self, magnitude: float = 0.3):
        super().__init__()
        self.magnitude = magnitude

    def forward(self, x):
        noise = torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).uniform_(-self.magnitude, self.magnitude)
        return x + x * noise.unsqueeze(0)


class FeatureDropout(nn.Module):
    """Drops the most activated region: voxels whose channel-mean activation exceeds
    ``gamma * max`` with ``gamma ~ U(0.7, 0.9)`` per sample are zeroed (CCT's "F-Drop")."""

    def __init__(self, low: float = 0.7, high: float = 0.9):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x):
        attention = x.mean(dim=1, keepdim=True)
        peak = attention.flatten(1).max(dim=1).values.view(-1, *[1] * (x.ndim - 1))
        gamma = torch.empty_like(peak).uniform_(self.low, self.high)
        return x * (attention < gamma * peak).to(x.dtype)


def default_perturbations(count: int, dropout: float = 0.3) -> list[nn.Module]:
    """CCT's feature perturbations, cycled: feature noise, dropout, feature dropout."""
    kinds = [FeatureNoise, partial(nn.Dropout, dropout), FeatureDropout]
    return [kinds[i % len(kinds)]() for i in range(count)]


# --- locating decoder feature maps ------------------------------------------------------------
def level_shape(spatial, level: int) -> tuple[int, ...]:
    return tuple(int(s) // 2**level for s in spatial)


@torch.no_grad()
def probe_feature_maps(
    backbone: nn.Module, dim: int, in_channels: int, levels, probe_spatial=None, decoder_blocks: bool = False
) -> dict[int, tuple[str, int]]:
    """``{level: (module name, channels)}``: the sub-module whose output is the last feature
    map at resolution ``1/2^level`` in execution order (see the module docstring). With
    ``decoder_blocks``, skip concatenations (MONAI's ``SkipConnection``: the encoder's map
    joined to the decoder's) are passed over, so the map is the decoder block's own output."""
    spatial = tuple(probe_spatial or DEFAULT_PROBE[dim])
    finished = _run_probe(backbone, dim, in_channels, spatial)
    concatenations = {n for n, m in backbone.named_modules() if isinstance(m, SkipConnection)} if decoder_blocks else set()
    chosen = {}
    for level in levels:
        shape = level_shape(spatial, level)
        matches = [
            (name, out[1])
            for name, _, out in finished
            if out[2:] == shape and name not in concatenations and not _inside_transition(name, shape, finished)
        ]
        if not matches:
            raise ValueError(f"{type(backbone).__name__} has no feature map at 1/{2**level} resolution")
        chosen[level] = matches[-1]
    return chosen


def _run_probe(backbone, dim, in_channels, spatial):
    """``[(name, input spatial, output shape)]`` of every sub-module, in finishing order."""
    finished = []

    def record(name, module, inputs, output):
        first = next((t for t in inputs if torch.is_tensor(t)), None)
        if torch.is_tensor(output) and output.ndim == dim + 2:
            finished.append((name, None if first is None else tuple(first.shape[2:]), tuple(output.shape)))

    handles = [m.register_forward_hook(partial(record, n)) for n, m in backbone.named_modules() if n]
    was_training = backbone.training
    try:
        parameter = next(backbone.parameters())
        backbone.eval()
        backbone(torch.zeros((1, in_channels, *spatial), device=parameter.device, dtype=parameter.dtype))
    finally:
        backbone.train(was_training)
        for handle in handles:
            handle.remove()
    return finished


def _inside_transition(name, shape, finished) -> bool:
    """True when ``name`` is nested in a module that takes ``shape`` in and gives another
    resolution out (e.g. the projection inside an up-sampling block): not a decoder map."""
    return any(
        name.startswith(other + ".") and given == shape and out[2:] != shape for other, given, out in finished
    )


class TappedBackbone(nn.Module):
    """A backbone with forward hooks on its decoder feature maps at ``levels``.

    ``forward_with_features(x)`` returns ``(logits, {level: features})``. Subclasses may set
    ``self.rewrite[level]`` to a function replacing a tapped output (used for dropout).
    """

    def __init__(self, backbone: nn.Module, dim: int, in_channels: int, levels, probe_spatial=None,
                 decoder_blocks: bool = False):
        super().__init__()
        self.backbone = backbone
        self.levels = tuple(levels)
        taps = probe_feature_maps(backbone, dim, in_channels, self.levels, probe_spatial, decoder_blocks)
        self.feature_channels = {level: channels for level, (_, channels) in taps.items()}
        modules = dict(backbone.named_modules())
        for level, (name, _) in taps.items():
            modules[name].register_forward_hook(partial(self._tap, level))
        self._armed = False
        self._expected: dict[int, tuple[int, ...]] = {}
        self._features: dict[int, torch.Tensor] = {}

    def _tap(self, level, module, inputs, output):
        if not self._armed or not torch.is_tensor(output) or tuple(output.shape[2:]) != self._expected[level]:
            return None
        output = self.rewrite_feature(level, output)
        self._features[level] = output
        return output

    def rewrite_feature(self, level: int, features: torch.Tensor) -> torch.Tensor:
        """Replaces a tapped output on the backbone's own path (identity here)."""
        return features

    def forward_with_features(self, x):
        self._expected = {level: level_shape(x.shape[2:], level) for level in self.levels}
        self._features, self._armed = {}, True
        try:
            logits = self.backbone(x)
        finally:
            self._armed = False
        features, self._features = self._features, {}
        return logits, features


def _upsample(logits, size, mode: str = "linear"):
    """Logits at ``size``: (bi/tri)linear, or ``nearest`` (``F.interpolate``'s default, the URPC code's)."""
    if mode == "nearest":
        return F.interpolate(logits, size=size, mode="nearest")
    mode = "bilinear" if logits.ndim == 4 else "trilinear"
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


def _head_conv(dim, cin, cout, kernel=1):
    return getattr(nn, f"Conv{dim}d")(cin, cout, kernel, padding=kernel // 2)


class PyramidOutputs(TappedBackbone):
    """URPC's pyramid of predictions around any backbone.

    Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma
    Segmentation via Uncertainty Rectified Pyramid Consistency", MICCAI 2021 (MedIA 2022).
    Training mode: ``[main, 1/2, 1/4, 1/8]`` logits, each at the input size; the auxiliary
    scales come from convolutions on perturbed decoder features (feature noise at 1/2,
    feature dropout at 1/4, dropout 0.5 at 1/8, as in the URPC code). Eval mode: main logits.

    ``heads="skip"`` (default): 1x1 convolutions on the last map at each resolution (for
    MONAI's UNet the skip concatenation, half of it the encoder's map), upsampled bilinearly.
    ``heads="reference"``, as SSL4MIS's ``Decoder_URPC``: 3x3 convolutions on the decoder
    blocks' own outputs (``probe_feature_maps(..., decoder_blocks=True)``), upsampled by
    nearest neighbour (``F.interpolate``'s default there). A deliberate departure, measured: on
    ACDC at the CPU preset (3 mm, 128 x 128, 3000 iterations; seed 1337, the same labelled
    batches) URPC gave 0.649 Dice with the default heads and 0.517 with the reference's.

    ``detach_heads=True`` (a departure; URPC's heads train the shared features) feeds the heads
    the decoder features without their gradient: the heads' losses then train the heads alone,
    and the backbone learns only through its main output.
    """

    HEADS = ("skip", "reference")

    def __init__(self, backbone, dim, in_channels, out_channels, levels=(1, 2, 3), probe_spatial=None,
                 heads: str = "skip", detach_heads: bool = False):
        if heads not in self.HEADS:
            raise ValueError(f"heads must be {' or '.join(self.HEADS)}, not {heads!r}")
        reference = heads == "reference"
        super().__init__(backbone, dim, in_channels, levels, probe_spatial, decoder_blocks=reference)
        kernel = 3 if reference else 1
        self.upsampling = "nearest" if reference else "linear"
        self.detach_heads = detach_heads
        self.heads = nn.ModuleList(_head_conv(dim, self.feature_channels[level], out_channels, kernel)
                                   for level in self.levels)
        kinds = {1: FeatureNoise, 2: FeatureDropout, 3: partial(nn.Dropout, 0.5)}
        self.perturbations = nn.ModuleList(kinds.get(level, FeatureNoise)() for level in self.levels)

    def forward(self, x):
        if not self.training:
            return self.backbone(x)
        return self.outputs(x)

    def outputs(self, x, perturbed: bool = True):
        """``[main, 1/2, ...]`` logits at the input size; ``perturbed=False`` leaves the
        features unperturbed (:class:`UnperturbedOutputs`)."""
        logits, features = self.forward_with_features(x)
        outputs = [logits]
        for level, head, perturb in zip(self.levels, self.heads, self.perturbations):
            feature = features[level].detach() if self.detach_heads else features[level]
            feature = perturb(feature) if perturbed else feature
            outputs.append(_upsample(head(feature), x.shape[2:], self.upsampling))
        return outputs


class AuxiliaryDecoders(TappedBackbone):
    """CCT's main decoder + K auxiliary decoders on perturbed features, around any backbone.

    Ouali, Hudelot & Tami, "Semi-Supervised Semantic Segmentation with Cross-Consistency
    Training", CVPR 2020. The backbone up to the tapped feature map plays the shared encoder,
    the rest of it the main decoder. Each auxiliary decoder (3-conv, LeakyReLU, 1x1-conv,
    upsampling to the input size, like CCT's light decoders) sees its own perturbation of the
    tapped map: by default feature noise U(-0.3, 0.3) (multiplicative), dropout 0.3, feature
    dropout, cycled for K > 3. ``level`` picks the map (1 = the decoder's 1/2-resolution map).
    Training mode: ``[main, aux_1, ..., aux_K]``; eval mode: main logits.
    """

    def __init__(self, backbone, dim, in_channels, out_channels, num_aux=3, level=1, probe_spatial=None):
        super().__init__(backbone, dim, in_channels, (level,), probe_spatial)
        channels = self.feature_channels[level]
        self.level = level
        self.decoders = nn.ModuleList(
            nn.Sequential(
                _head_conv(dim, channels, channels, 3), nn.LeakyReLU(0.01), _head_conv(dim, channels, out_channels)
            )
            for _ in range(num_aux)
        )
        self.perturbations = nn.ModuleList(default_perturbations(num_aux))

    def forward(self, x):
        if not self.training:
            return self.backbone(x)
        return self.outputs(x)

    def outputs(self, x, perturbed: bool = True):
        """``[main, aux_1, ..., aux_K]`` logits; ``perturbed=False`` feeds every auxiliary
        decoder the tapped map as it is (:class:`UnperturbedOutputs`)."""
        logits, features = self.forward_with_features(x)
        shared = features[self.level]
        return [logits] + [_upsample(d(p(shared) if perturbed else shared), x.shape[2:])
                           for d, p in zip(self.decoders, self.perturbations)]


class UnperturbedOutputs(nn.Module):
    """Every output of a multi-output network (:class:`PyramidOutputs`,
    :class:`AuxiliaryDecoders`), unperturbed and joined into one tensor: what the bf16 check
    passes twice, so that both passes compute the same function through every head."""

    def __init__(self, network: PyramidOutputs | AuxiliaryDecoders):
        super().__init__()
        self.network = network

    def forward(self, x):
        return torch.cat([output.flatten(1) for output in self.network.outputs(x, perturbed=False)], dim=1)


class WithDropout(TappedBackbone):
    """A backbone with ``nn.Dropout(p)`` on its decoder feature maps (levels 1-3) in training
    mode, for methods that need a stochastic network (R-Drop, Wu et al. NeurIPS 2021), or with
    ``channelwise=True`` whole channels dropped (``nn.Dropout2d``/``3d``: UniMatch's feature
    perturbation). Returns plain logits in both modes; in eval mode it is the bare backbone."""

    def __init__(self, backbone, dim, in_channels, p=0.1, levels=(1, 2, 3), probe_spatial=None, channelwise=False):
        super().__init__(backbone, dim, in_channels, levels, probe_spatial)
        self.dropout = (nn.Dropout3d(p) if dim == 3 else nn.Dropout2d(p)) if channelwise else nn.Dropout(p)

    def rewrite_feature(self, level, features):
        return self.dropout(features)

    def forward(self, x):
        if not self.training:
            return self.backbone(x)
        return self.forward_with_features(x)[0]
