"""Backbones and multi-output wrappers: shapes in 2D and 3D at the "tiny" size."""

import copy

import pytest
import torch

from SSLSegmentLib.errors import InputError
from SSLSegmentLib.networks import available_networks, build_network
from SSLSegmentLib.networks.heads import AuxiliaryDecoders, PyramidOutputs, WithDropout, probe_feature_maps

NETWORKS = ["unet", "attention_unet", "vnet", "enet", "swin_unet", "dynunet"]


def spatial(name, dim):
    """Small inputs each network accepts (Swin needs multiples of 32)."""
    if dim == 2:
        return (32, 32)
    return (32, 32, 32) if name == "swin_unet" else (16, 16, 16)


def test_every_network_is_registered():
    assert set(NETWORKS) <= set(available_networks())
    assert all(isinstance(text, str) and text for text in available_networks().values())


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_network_maps_input_to_logits(name, dim):
    torch.manual_seed(0)
    network = build_network(name, dim, 1, 3, size="tiny")
    image = torch.randn(2, 1, *spatial(name, dim))
    logits = network(image)
    assert logits.shape == (2, 3, *image.shape[2:])
    assert torch.isfinite(logits).all()


def test_bad_requests_raise_input_error():
    with pytest.raises(InputError, match="unknown network"):
        build_network("resnet", 2, 1, 2)
    with pytest.raises(InputError, match="size"):
        build_network("unet", 2, 1, 2, size="huge")
    with pytest.raises(InputError, match="dim"):
        build_network("unet", 4, 1, 2)


def test_sizes_grow():
    counts = [sum(p.numel() for p in build_network("unet", 2, 1, 2, s).parameters()) for s in ("tiny", "small", "base")]
    assert counts == sorted(counts) and len(set(counts)) == 3


@pytest.mark.parametrize("name", NETWORKS)
def test_probe_finds_three_decoder_levels(name):
    taps = probe_feature_maps(build_network(name, 2, 1, 2, "tiny"), 2, 1, (1, 2, 3))
    assert len({module for module, _ in taps.values()}) == 3


@pytest.mark.parametrize("name", NETWORKS)
def test_wrappers_train_and_eval_outputs(name):
    torch.manual_seed(0)
    image = torch.randn(2, 1, *spatial(name, 2))
    pyramid = PyramidOutputs(build_network(name, 2, 1, 3, "tiny"), 2, 1, 3)
    aux = AuxiliaryDecoders(build_network(name, 2, 1, 3, "tiny"), 2, 1, 3, num_aux=2)
    for wrapper, count in ((pyramid, 4), (aux, 3)):
        outputs = wrapper.train()(image)
        assert len(outputs) == count and all(o.shape == (2, 3, 32, 32) for o in outputs)
        sum(o.mean() for o in outputs).backward()
        wrapper.eval()
        with torch.no_grad():
            assert torch.equal(wrapper(image), wrapper.backbone(image))


def test_wrappers_in_3d():
    torch.manual_seed(0)
    image = torch.randn(1, 1, 16, 16, 16)
    outputs = PyramidOutputs(build_network("unet", 3, 1, 2, "tiny"), 3, 1, 2).train()(image)
    assert [o.shape for o in outputs] == [(1, 2, 16, 16, 16)] * 4


def test_hooks_are_inert_outside_the_wrapper_and_follow_deepcopy():
    torch.manual_seed(0)
    wrapper = PyramidOutputs(build_network("unet", 2, 1, 2, "tiny"), 2, 1, 2).train()
    image = torch.randn(1, 1, 32, 32)
    wrapper.backbone(image)  # bare call: nothing recorded, plain logits
    assert wrapper._features == {}
    twin = copy.deepcopy(wrapper)
    for a, b in zip(twin(image), wrapper(image)):
        assert a.shape == b.shape


def test_with_dropout_is_stochastic_in_training_only():
    torch.manual_seed(0)
    network = WithDropout(build_network("unet", 2, 1, 2, "tiny"), 2, 1, p=0.5)
    image = torch.randn(1, 1, 32, 32)
    assert not torch.equal(network.train()(image), network(image))
    network.eval()
    assert torch.equal(network(image), network(image))


def test_urpc_reference_heads_read_the_decoder_blocks_not_the_skip_concatenations():
    """SSL4MIS's Decoder_URPC puts 3x3 heads on each up-block's output; MONAI's UNet ends each
    level in a skip concatenation whose first half is the encoder's map. The reference heads
    pass over the concatenation (decoder channels only); the default ``"skip"`` heads read it
    (measured better at the bench's coarse CPU preset)."""
    from monai.networks.layers import SkipConnection  # noqa: PLC0415

    network = build_network("unet", 2, 1, 3, "tiny")
    concatenations = {n for n, m in network.named_modules() if isinstance(m, SkipConnection)}
    reference = PyramidOutputs(network, 2, 1, 3, heads="reference")
    skip = PyramidOutputs(build_network("unet", 2, 1, 3, "tiny"), 2, 1, 3)
    reference_taps = probe_feature_maps(network, 2, 1, (1, 2, 3), decoder_blocks=True)
    skip_taps = probe_feature_maps(network, 2, 1, (1, 2, 3))
    assert not {name for name, _ in reference_taps.values()} & concatenations
    assert {name for name, _ in skip_taps.values()} <= concatenations
    for level in (1, 2, 3):  # a concatenation carries the encoder's channels as well as the decoder's
        assert skip.feature_channels[level] > reference.feature_channels[level]
    assert [h.kernel_size for h in reference.heads] == [(3, 3)] * 3 and reference.upsampling == "nearest"
    assert [h.kernel_size for h in skip.heads] == [(1, 1)] * 3 and skip.upsampling == "linear"
    outputs = reference.train()(torch.randn(2, 1, 32, 32))
    assert [o.shape for o in outputs] == [(2, 3, 32, 32)] * 4
    coarse = outputs[3][0, 0]  # the 1/8 head, nearest-upsampled: constant over 8 x 8 blocks
    assert torch.equal(coarse[:8, :8], coarse[0, 0].expand(8, 8))
    with pytest.raises(ValueError, match="skip or reference"):
        PyramidOutputs(build_network("unet", 2, 1, 3, "tiny"), 2, 1, 3, heads="decoder")
