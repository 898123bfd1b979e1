"""Segmentation backbones (MONAI where MONAI has them) and multi-output wrappers.

Importing this package registers every backbone module in it (as ``methods/_load_all`` does
for methods) and checks them against ``SSLSegmentLib/catalogue.py``, so adding a backbone is
adding a file and its catalogue entry.
"""

import importlib
import pkgutil

from ..catalogue import check_registered
from .registry import (  # noqa: F401
    SIZES,
    available_networks,
    build_network,
    network_dims,
    network_divisor,
    register_network,
    registered_network_names,
    supports_channels_last,
    supports_dropout,
)

_NOT_BACKBONES = {"registry", "heads", "discriminator"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_BACKBONES and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

check_registered("network", registered_network_names())
