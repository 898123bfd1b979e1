"""The torch-free catalogue of methods and networks, and the registries that check themselves
against it when they load."""

from __future__ import annotations

import subprocess
import sys

import pytest

from SSLSegmentLib import catalogue
from SSLSegmentLib.catalogue import (
    DEFAULT_METHOD, DEFAULT_NETWORK, METHOD_NAMES, NETWORK_NAMES, CatalogueMismatch, check_registered,
)
from SSLSegmentLib.config import TrainConfig

from helpers import ROOT, run_cli


def test_catalogue_and_registries_agree():
    from SSLSegmentLib.methods import available_methods  # noqa: PLC0415
    from SSLSegmentLib.networks import available_networks, network_dims, network_divisor  # noqa: PLC0415

    methods = available_methods()
    assert set(methods) == set(METHOD_NAMES) and len(METHOD_NAMES) == len(set(METHOD_NAMES))
    assert set(available_networks()) == set(NETWORK_NAMES) and len(NETWORK_NAMES) == len(set(NETWORK_NAMES))
    for info in catalogue.METHODS:
        cls = methods[info.name]
        assert (cls.description, cls.reference, cls.extra_networks) == (info.description, info.reference,
                                                                         info.networks)
        assert info.description and info.reference and set(info.networks) <= set(NETWORK_NAMES)
    for info in catalogue.NETWORKS:
        assert network_divisor(info.name) == info.divisor and network_dims(info.name) == info.dims
        assert info.description and info.reference
    assert methods["ctct"].extra_networks == ("swin_unet",) and network_divisor("swin_unet") == 32


def test_the_default_method_and_network_are_listed_first():
    assert METHOD_NAMES[0] == DEFAULT_METHOD == TrainConfig.method == "bcp"
    assert NETWORK_NAMES[0] == DEFAULT_NETWORK == TrainConfig.network == "unet"


def test_a_registry_that_disagrees_is_named():
    with pytest.raises(CatalogueMismatch, match="method 'cps' is in the catalogue .* but nothing registers it"):
        check_registered("method", [n for n in METHOD_NAMES if n != "cps"])
    with pytest.raises(CatalogueMismatch, match="network 'resnet' is registered but not in the catalogue"):
        check_registered("network", [*NETWORK_NAMES, "resnet"])
    check_registered("method", METHOD_NAMES)
    check_registered("network", reversed(NETWORK_NAMES))


def test_registering_an_uncatalogued_method_or_network_is_refused():
    from SSLSegmentLib.methods import Method, available_methods, register_method  # noqa: PLC0415
    from SSLSegmentLib.networks import available_networks, register_network  # noqa: PLC0415

    class Unlisted(Method):
        name = "unlisted_method"

    with pytest.raises(CatalogueMismatch, match="method 'unlisted_method' is registered but not in the catalogue"):
        register_method(Unlisted)
    with pytest.raises(CatalogueMismatch, match="network 'unlisted_net' is registered but not in the catalogue"):
        register_network("unlisted_net")(lambda dim, cin, cout, size: None)
    assert "unlisted_method" not in available_methods() and "unlisted_net" not in available_networks()


def test_the_catalogue_is_torch_free_and_lists_what_the_cli_prints():
    code = "import sys, SSLSegmentLib.catalogue as c; print(len(c.METHODS), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == [str(len(METHOD_NAMES)), "False"]
    methods = run_cli("methods", check=True).stdout
    networks = run_cli("networks", check=True).stdout
    for info in catalogue.METHODS:
        assert f"{info.description}  [{info.reference}]" in methods
    for info in catalogue.NETWORKS:
        assert info.name in networks and info.description in networks
