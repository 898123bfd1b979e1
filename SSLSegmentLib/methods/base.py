"""The interface every semi-supervised method implements, and the registry of methods.

A method owns its networks (student, EMA teacher, second network, discriminator...) and the
losses of one training step. The trainer owns the loop, optimisers, learning-rate schedule,
mixed precision, logging, checkpoints and devices. A new method is one new class with
``@register_method``, plus its entry in ``SSLSegmentLib/catalogue.py`` (name, description, paper,
networks needed): the trainer never changes.

Several optimisers (CPS's two networks, DAN's discriminator) are expressed as several
*parameter groups*: ``training_step`` returns one loss per group name and the trainer
back-propagates each loss into its own group only (``loss.backward(inputs=params)``), then
steps one optimiser per group.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..catalogue import COMMON_OPTIONS, method_info
from ..config import TrainConfig
from ..errors import InputError
from ..training.schedules import poly_lr
from .losses import DICE_OVER, supervised_loss

NetworkFactory = Callable[..., nn.Module]
"""``factory(name=None, out_channels=None) -> nn.Module``: a fresh, randomly initialised
backbone (the run's network by default; CTCT asks for another by name)."""


@dataclass
class MethodSettings:
    """Hyper-parameters common to all methods; ``extra`` carries method-specific ones."""

    consistency: float = 0.1
    """Maximum weight of the unsupervised loss (lambda max); ``Method.default_consistency``
    (a run's ``--consistency`` replaces it). Defined here only."""
    rampup_fraction: float = TrainConfig.rampup_fraction
    """Fraction of the run over which the weight rises with the sigmoid ramp-up: the whole run,
    as SSL4MIS's ``sigmoid_rampup(iteration // 150, 200)`` spans its 30,000 iterations."""
    ema_decay: float = TrainConfig.ema_decay
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepInfo:
    """Where the run is: methods use it for ramp-ups and schedules."""

    iteration: int
    total: int
    consistency_weight: float = 0.0


def sigmoid_rampup(current: float, length: float) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)`` from Laine & Aila, "Temporal Ensembling
    for Semi-Supervised Learning" (ICLR 2017), as used by Mean Teacher and SSL4MIS."""
    if length <= 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight(settings: MethodSettings, iteration: int, total: int) -> float:
    """``lambda(t) = lambda_max * sigmoid_rampup(t, rampup_fraction * total)``."""
    return settings.consistency * sigmoid_rampup(iteration, settings.rampup_fraction * total)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, iteration: int) -> None:
    """Exponential moving average of the student's weights into the teacher.

    Tarvainen & Valpola, "Mean teachers are better role models" (NeurIPS 2017). The decay
    ``min(1 - 1/(iteration+1), decay)`` lets the teacher follow the student closely early on.
    Buffers (BatchNorm statistics) are copied as they are.
    """
    alpha = min(1.0 - 1.0 / (iteration + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def frozen_copy(network: nn.Module) -> nn.Module:
    """A copy of ``network`` whose parameters get no gradient (an EMA teacher)."""
    teacher = copy.deepcopy(network)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Method(nn.Module):
    """Base class of all methods. Subclasses set ``name`` (their catalogue entry, in
    ``SSLSegmentLib/catalogue.py``, gives ``description``, ``reference`` and ``extra_networks``).

    Subclasses build their networks in ``__init__`` with ``network_factory()`` and
    implement :meth:`training_step`. The default optimises one group, ``"main"``, holding
    every parameter that requires a gradient.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    uses_unlabelled: ClassVar[bool] = True
    """False for the supervised baseline: the trainer then draws no unlabelled batch."""
    options: ClassVar[tuple[str, ...]] = ()
    """The keys of ``settings.extra`` (``--method-option KEY=VALUE``) this method reads, besides
    :data:`COMMON_OPTIONS` (see :meth:`all_options`)."""
    extra_networks: ClassVar[tuple[str, ...]] = ()
    """Backbones the method builds besides the run's network (CTCT's transformer): their
    size constraints apply to the patch too. From the catalogue's ``networks``."""
    default_consistency: ClassVar[float] = MethodSettings.consistency
    """Lambda max when the run sets none (``--consistency``)."""
    default_dropout: ClassVar[float] = 0.0
    """Backbone dropout when the run sets none (``--dropout``), where the backbone offers it."""
    optimiser_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    """Per parameter group, optimiser settings that replace the run's (``{"name": "adam", "lr": ...}``;
    DAN's discriminator uses Adam)."""
    ddp_find_unused_parameters: ClassVar[bool | None] = None
    """True for a method whose step leaves some trainable parameters without a gradient, so that
    DistributedDataParallel must search for them each step; None: ``SSLSEGMENT_DDP_FIND_UNUSED``."""
    min_useful_iterations: ClassVar[dict[int, int]] = {}
    """Per dimension (2, 3): below this many iterations the method was measured to do worse
    than supervised-only training on the same labels; a shorter run (``--iterations`` or the
    count a time budget fixes) is warned about in the log and ``status.json``
    (:func:`short_run_warning`)."""

    def __init__(self, settings: MethodSettings, network_factory: NetworkFactory, num_classes: int, dim: int):
        super().__init__()
        self.settings = settings
        self.num_classes = num_classes
        self.dim = dim
        self.network_factory = network_factory
        dice_over = settings.extra.get("dice_over", DICE_OVER[0])
        if dice_over not in DICE_OVER:
            raise ValueError(f"dice_over must be {' or '.join(DICE_OVER)}, not {dice_over!r}")
        self.dice_batch = dice_over == "batch"
        """Every soft Dice of this method sums over the batch (:data:`~.losses.DICE_OVER`)."""

    @classmethod
    def all_options(cls) -> tuple[str, ...]:
        """The ``--method-option`` keys this method accepts: its own and :data:`COMMON_OPTIONS`."""
        return cls.options + COMMON_OPTIONS

    # --- what the trainer calls -------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def training_step(self, labelled: dict, unlabelled: dict | None, step: StepInfo) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_optimiser_step(self, step: StepInfo) -> None:
        """Called after every optimiser step (EMA updates live here)."""

    def learning_rate_factor(self, step: StepInfo, group: str = "main") -> float:
        """The factor on parameter group ``group``'s initial learning rate at this step: the
        poly schedule ``(1 - t / T) ** 0.9`` over the whole run (SSL4MIS). A method may restart
        it (BCP's self-training) or keep a group's constant (DAN's discriminator)."""
        return poly_lr(1.0, step.iteration, step.total)

    def restarts_optimiser(self, step: StepInfo, group: str = "main") -> bool:
        """True at the step before which ``group``'s optimiser forgets its state (momenta, step
        counts), as a newly built one would (BCP's official self-training stage). Never by default."""
        return False

    def labelled_foreground_fraction(self, run_fraction: float) -> float:
        """Share of labelled patches centred on a foreground voxel: the run's
        (``TrainConfig.foreground_fraction``, nnU-Net's oversampling) unless the method needs its
        labelled patches drawn as the unlabelled ones are, uniformly (DAN)."""
        return run_fraction

    def inference_network(self) -> nn.Module:
        """The network whose logits predict (the student unless a method says otherwise)."""
        return self.student

    def initialise_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Start every backbone of this method from a previous round's inference weights.

        Networks whose architecture differs (a discriminator, a transformer in CTCT) keep
        their initialisation. Subclasses with more backbones list them in
        :meth:`backbones`.
        """
        for network in self.backbones():
            try:
                network.load_state_dict(weights)
            except RuntimeError:
                continue

    def backbones(self) -> list[nn.Module]:
        """Networks with the inference network's architecture (initialised on retrain)."""
        return [self.inference_network()]

    def precision_probes(self) -> dict[str, nn.Module]:
        """Modules that take the run's image batch, one per architecture this method trains,
        by name: the bf16 check passes each once before a CPU run autocasts
        (``training.components.choose_precision``). By default every network built from the
        run's factory, by registry name, the inference network first (CTCT: the CNN and the
        transformer). A method that trains another kind of network adds a module that feeds
        it from an image batch (DAN's discriminator)."""
        networks: dict[str, nn.Module] = {}
        for network in (self.inference_network(), *self.modules()):
            name = getattr(network, "registry_name", None)
            if name is not None:
                networks.setdefault(name, network)
        return networks

    # --- helpers for subclasses ---------------------------------------------------------
    def supervised_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``0.5 * (CE + Dice)`` on the labelled batch, as in SSL4MIS."""
        return supervised_loss(logits, label, self.num_classes, self.dice_batch)


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``. Its description, paper and
    the networks it needs come from its entry in ``SSLSegmentLib/catalogue.py`` (torch-free, so
    the panels can list it); a class without one is refused (:class:`CatalogueMismatch`)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    info = method_info(cls.name)
    cls.description, cls.reference, cls.extra_networks = info.description, info.reference, info.networks
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> dict[str, type[Method]]:
    from . import _load_all  # noqa: F401  (imports every method module once, then checks the catalogue)

    return dict(_METHODS)


def registered_method_names() -> list[str]:
    return list(_METHODS)


def method_class(name: str) -> type[Method]:
    methods = available_methods()
    if name not in methods:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(sorted(methods))}")
    return methods[name]


def short_run_warning(method: "Method | type[Method]", iterations: int, dim: int) -> str | None:
    """The warning for a run too short for ``method`` to gain from its unlabelled cases, or None."""
    needed = method.min_useful_iterations.get(dim, 0)
    if iterations >= needed:
        return None
    return (f"{iterations} iterations are fewer than the {needed} that {method.name} needs in {dim}D to do better "
            f"than supervised-only training (measured on cardiac MRI: bench/results/time_budget*.md); train "
            f"longer (more iterations or minutes) or choose --method supervised for a run this short")
