"""Registry of segmentation backbones, looked up by name.

A backbone builder is ``f(dim, in_channels, out_channels, size) -> nn.Module`` registered with
:func:`register_network`, and listed in ``SSLSegmentLib/catalogue.py`` (description, dims, divisor). Every network maps ``(B, C_in, *spatial)`` to logits
``(B, C_out, *spatial)``; the builder's docstring says which spatial sizes it needs
(divisible by 16 unless it says otherwise).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..catalogue import NETWORK_SIZES as SIZES
from ..catalogue import network_info
from ..errors import InputError

Builder = Callable[[int, int, int, str], nn.Module]


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    description: str
    dims: tuple[int, ...]
    builder: Builder
    divisor: int = 16
    """Spatial sizes must be multiples of this (the product of the downsampling strides)."""
    channels_last: bool = True
    """False: the network always runs in the default memory format (``TrainConfig.channels_last``
    does not apply; the Swin transformer)."""


_NETWORKS: dict[str, NetworkEntry] = {}


def register_network(name: str, channels_last: bool = True):
    """Decorator: make ``builder(dim, in_channels, out_channels, size)`` available as ``name``.
    Its description, dims and divisor come from its entry in ``SSLSegmentLib/catalogue.py``
    (torch-free, so the panels can list it); a network without one is refused."""

    def decorate(builder: Builder) -> Builder:
        info = network_info(name)
        _NETWORKS[name] = NetworkEntry(name, info.description, info.dims, builder, info.divisor, channels_last)
        return builder

    return decorate


def registered_network_names() -> list[str]:
    return list(_NETWORKS)


def available_networks() -> dict[str, str]:
    """``{name: description}`` of every registered backbone."""
    return {name: entry.description for name, entry in sorted(_NETWORKS.items())}


def network_dims(name: str) -> tuple[int, ...]:
    """The dimensionalities (2, 3) a backbone supports."""
    return _entry(name).dims


def network_divisor(name: str) -> int:
    """Spatial sizes a backbone needs to be divisible by."""
    return _entry(name).divisor


def supports_channels_last(name: str) -> bool:
    """Whether the backbone may run in channels-last memory format (see :class:`NetworkEntry`)."""
    return _entry(name).channels_last


def supports_dropout(name: str) -> bool:
    """Whether the backbone's builder takes a ``dropout`` probability."""
    return "dropout" in inspect.signature(_entry(name).builder).parameters


def build_network(name: str, dim: int, in_channels: int, out_channels: int, size: str = "small",
                  dropout: float = 0.0) -> nn.Module:
    """A fresh, randomly initialised backbone (no pretrained weights); ``dropout`` > 0 only for
    backbones that offer it (:func:`supports_dropout`)."""
    entry = _entry(name)
    if dropout:
        if not 0.0 < dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        if not supports_dropout(name):
            raise InputError(f"network {name!r} offers no dropout; use unet, or --dropout 0")
        return _named(entry.builder(dim, in_channels, out_channels, size, dropout=dropout), name)
    if dim not in entry.dims:
        raise InputError(f"network {name!r} supports dim {entry.dims}, not {dim}")
    if size not in SIZES:
        raise InputError(f"unknown network size {size!r}; choose one of: {', '.join(SIZES)}")
    return _named(entry.builder(dim, in_channels, out_channels, size), name)


def _named(network: nn.Module, name: str) -> nn.Module:
    """The registry name travels with the network (``network.registry_name``): a method that
    pairs backbones (CTCT) asks which one it was given by name, not by class."""
    network.registry_name = name
    return network


def _entry(name: str) -> NetworkEntry:
    if name not in _NETWORKS:
        raise InputError(f"unknown network {name!r}; choose one of: {', '.join(sorted(_NETWORKS))}")
    return _NETWORKS[name]
