"""What a run is built from: the device, the seeds, the memory format, the method with its
settings and networks, and one optimiser per parameter group."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import InputError
from ..methods import Method, MethodSettings, method_class
from ..networks import build_network, supports_channels_last, supports_dropout
from ..precision import first_bf16_disagreement, mixed_precision
from ..settings_check import check_method_options
from .data_setup import TrainingData
from .distributed import DistributedContext


def resolve_device(requested: str, context: DistributedContext | None = None) -> torch.device:
    """The device to train on; with several ranks on CUDA, this rank's GPU (``LOCAL_RANK``)."""
    device = _device_type(requested)
    if device.type == "cuda" and context is not None and context.enabled:
        return torch.device("cuda", context.local_rank)
    return device


def _device_type(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available")
    if requested not in ("cpu", "cuda"):
        raise InputError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return torch.device(requested)


def channels_last_format(config: TrainConfig, dim: int, device: torch.device, mixed: bool = False):
    """The memory format for networks and images, or None (see ``TrainConfig.channels_last``;
    on CPU: channels-last in 3D under bf16, where oneDNN's bf16 kernels want it)."""
    if device.type == "cpu" and mixed and dim == 3 and config.channels_last is not False:
        return None if not supports_channels_last(config.network) else torch.channels_last_3d
    wanted = config.channels_last if config.channels_last is not None else dim == 2
    if device.type != "cuda" or not wanted or not supports_channels_last(config.network):
        return None
    return torch.channels_last_3d if dim == 3 else torch.channels_last


def choose_precision(config: TrainConfig, method: Method, dim: int, patch: tuple[int, ...], device: torch.device,
                     context: DistributedContext, log) -> tuple[bool, torch.memory_format | None]:
    """``(mixed precision, memory format)`` for the run. bf16 on a CPU is used only once a
    pass of each network the method trains (``Method.precision_probes``) at the run's patch
    under it agrees with fp32 (:func:`~SSLSegmentLib.precision.first_bf16_disagreement`): ``auto``
    then falls back to fp32 with a warning naming the network, and an explicit
    ``--precision bf16`` is refused, since it would train on wrong gradients."""
    mixed = mixed_precision(config.precision, config.amp, device)
    memory_format = channels_last_format(config, dim, device, mixed)
    if not mixed or device.type != "cpu":
        return mixed, memory_format
    batch = sum(config.batch_sizes(dim))
    example = torch.randn((batch, 1, *patch), generator=torch.Generator().manual_seed(config.seed))
    problem = first_bf16_disagreement(method.precision_probes(), example, memory_format)
    if not context.any(problem is not None):
        return mixed, memory_format
    problem = problem or "bf16 disagrees with fp32 on another rank"
    if config.precision == "bf16":
        raise InputError(f"--precision bf16: this CPU's bf16 kernels give wrong results at patch {tuple(patch)} "
                         f"({problem}); use --precision fp32 (or auto, which checks)")
    log.warning("this CPU's bf16 kernels give wrong results at patch %s (%s): training in fp32", tuple(patch), problem)
    return False, channels_last_format(config, dim, device, False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_method(config: TrainConfig, data: TrainingData) -> Method:
    cls = method_class(config.method)
    check_method_options(config.method, config.method_options, cls.all_options())
    settings = MethodSettings(
        consistency=config.consistency if config.consistency is not None else cls.default_consistency,
        rampup_fraction=config.rampup_fraction, ema_decay=config.ema_decay, extra=dict(config.method_options))

    # Backbone dropout: the run's setting, else the method's default where the backbone offers it.
    dropout = config.dropout if config.dropout is not None else cls.default_dropout
    if config.dropout is None and not supports_dropout(config.network):
        dropout = 0.0

    def network_factory(name: str | None = None, out_channels: int | None = None):
        return build_network(name or config.network, data.plan.dim, 1, out_channels or data.num_classes, config.size,
                             dropout=dropout if name is None else 0.0)

    return cls(settings, network_factory, data.num_classes, data.plan.dim)


def build_optimisers(method: Method, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per parameter group; a method may override a group's optimiser
    (DAN's discriminator uses Adam) with ``optimiser_overrides``."""
    overrides = method.optimiser_overrides
    optimisers = {}
    for name, params in method.parameter_groups().items():
        spec = {"name": config.optimiser, "lr": config.lr, **overrides.get(name, {})}
        kind = spec.pop("name")
        if kind == "sgd":
            spec.setdefault("momentum", config.momentum)
            spec.setdefault("weight_decay", config.weight_decay)
            optimisers[name] = torch.optim.SGD(params, **spec)
        elif kind in ("adam", "adamw"):
            spec.setdefault("weight_decay", config.weight_decay if kind == "adamw" else 0.0)
            optimisers[name] = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(params, **spec)
        else:
            raise ValueError(f"unknown optimiser {kind!r} for group {name!r}")
        for group in optimisers[name].param_groups:
            group["initial_lr"] = group["lr"]
    return optimisers


def prepare_optimisers(method: Method, optimisers: dict[str, torch.optim.Optimizer], step) -> None:
    """Before a step: each group's learning rate from the method's schedule, its gradients
    zeroed, and its state (momenta, step counts) cleared where the method restarts it, as a
    newly built optimiser would be (BCP's self-training)."""
    for name, optimiser in optimisers.items():
        if method.restarts_optimiser(step, name):
            optimiser.state.clear()
        factor = method.learning_rate_factor(step, name)
        for group in optimiser.param_groups:
            group["lr"] = group["initial_lr"] * factor
        optimiser.zero_grad(set_to_none=True)
