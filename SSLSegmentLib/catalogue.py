"""The methods and networks SSLSegment offers: names, one-line descriptions, papers, what
each needs (torch-free).

The Slicer panel, the web UI, the logic and ``sslsegment methods``/``networks`` read this; the
engine's registries (``methods/base.py``, ``networks/registry.py``) hold the classes and
builders and check themselves against it when they load: a method or network registered but
not listed here, or listed here but not registered, is an error naming it. Adding a method is
one file in ``methods/`` (its class, ``@register_method``) and one entry below; adding a
network is one file in ``networks/`` and one entry below. The trainer never changes.

The first entry of each list is the default (``DEFAULT_METHOD``, ``DEFAULT_NETWORK``), and the
panels list them in this order.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import measured_gain


class CatalogueMismatch(RuntimeError):
    """A registry and this catalogue disagree (a programming error, not bad input)."""


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    reference: str
    networks: tuple[str, ...] = ()
    """Backbones the method builds besides the run's network (CTCT's transformer): they must
    exist, and their size divisors apply to the patch too."""


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    description: str
    reference: str
    dims: tuple[int, ...] = (2, 3)
    divisor: int = 16
    """Spatial sizes must be multiples of this (the product of the downsampling strides)."""


METHODS: tuple[MethodInfo, ...] = (
    # The default first: BCP, the best over 3 seeds on ACDC (2D) in bench/label_efficiency.py;
    # UniMatch leads on LA (3D); a method must lead on both to become the default.
    MethodInfo("bcp", "Bidirectional copy-paste of labelled/unlabelled images, EMA pseudo-labels",
               "Bai et al., CVPR 2023"),
    MethodInfo("supervised", "Labelled cases only (the baseline)", "Ronneberger et al., U-Net, MICCAI 2015"),
    MethodInfo("mean_teacher", "Student + EMA teacher, softmax MSE consistency on noisy unlabelled images",
               "Tarvainen & Valpola, NeurIPS 2017"),
    MethodInfo("uamt", "Mean Teacher with an uncertainty-masked consistency (T noisy teacher passes)",
               "Yu et al., MICCAI 2019"),
    MethodInfo("cps", "Two networks supervise each other with argmax pseudo-labels", "Chen et al., CVPR 2021"),
    MethodInfo("fixmatch", "EMA-teacher pseudo-labels on a weak view supervise a colour-jittered strong view",
               "Sohn et al., NeurIPS 2020"),
    MethodInfo("unimatch", "Confident weak-view predictions supervise two CutMixed strong views and a "
               "feature-dropout pass", "Yang et al., CVPR 2023"),
    MethodInfo("abd", "BCP with two networks cross-teaching, also on weak and strong views whose least confident "
               "patches are displaced", "Chi et al., CVPR 2024"),
    MethodInfo("cct", "Main decoder + auxiliary decoders on perturbed features, consistency",
               "Ouali et al., CVPR 2020"),
    MethodInfo("urpc", "Uncertainty-rectified consistency between four decoder-scale predictions",
               "Luo et al., MICCAI 2021"),
    MethodInfo("ict", "Student on mixed unlabelled images vs mixed EMA-teacher predictions",
               "Verma et al., IJCAI 2019"),
    MethodInfo("ctct", "CNN and Swin transformer cross-teach with argmax pseudo-labels (Dice)",
               "Luo et al., MIDL 2022", networks=("swin_unet",)),
    MethodInfo("entropy_minimization", "One network, minimises the entropy of its unlabelled predictions",
               "Grandvalet & Bengio, NeurIPS 2004; Vu et al., CVPR 2019"),
    MethodInfo("rdrop", "One network with dropout run twice, symmetric KL between the passes",
               "Wu et al., NeurIPS 2021"),
    MethodInfo("adversarial", "Segmentation net + discriminator on (softmax, image) pairs (DAN)",
               "Zhang et al., MICCAI 2017"),
    MethodInfo("dct", "Two networks (views): JS agreement + adversarial view difference", "Qiao et al., ECCV 2018"),
)

COMMON_OPTIONS = ("dice_over",)
"""``--method-option`` keys every method reads, the supervised baseline included (how its losses
are computed: ``methods.base.Method``); each method's own keys are its class's ``options``."""

NETWORKS: tuple[NetworkInfo, ...] = (
    NetworkInfo("unet", "U-Net (MONAI UNet, residual units, instance norm)", "Ronneberger et al., MICCAI 2015"),
    NetworkInfo("dynunet", "nnU-Net style U-Net (MONAI DynUNet, instance norm, LeakyReLU)",
                "Isensee et al., Nature Methods 2021"),
    NetworkInfo("attention_unet", "Attention U-Net (MONAI AttentionUnet, batch norm)", "Oktay et al., MIDL 2018"),
    NetworkInfo("vnet", "V-Net (MONAI VNet, fixed width, batch norm, dropout)", "Milletari et al., 3DV 2016"),
    NetworkInfo("enet", "ENet (hand-written: MONAI has none; batch norm, PReLU)", "Paszke et al., arXiv 2016"),
    NetworkInfo("swin_unet", "Swin transformer U-Net (MONAI SwinUNETR); sizes divisible by 32",
                "Hatamizadeh et al., BrainLes 2021", divisor=32),
)

NETWORK_SIZES = ("tiny", "small", "base")
"""``tiny``: unit tests; ``small``: CPU default; ``base``: GPU."""

METHOD_NAMES = tuple(m.name for m in METHODS)
NETWORK_NAMES = tuple(n.name for n in NETWORKS)
DEFAULT_METHOD = METHOD_NAMES[0]
"""The method a user gets without asking (see the comment on ``METHODS``)."""
DEFAULT_NETWORK = NETWORK_NAMES[0]


def method_info(name: str) -> MethodInfo:
    return _find(METHODS, name, "method")


def network_info(name: str) -> NetworkInfo:
    return _find(NETWORKS, name, "network")


def _find(entries, name: str, kind: str):
    for entry in entries:
        if entry.name == name:
            return entry
    raise CatalogueMismatch(f"{kind} {name!r} is registered but not in the catalogue "
                            f"(SSLSegmentLib/catalogue.py): add an entry for it")


def check_registered(kind: str, registered) -> None:
    """Raise :class:`CatalogueMismatch` unless ``registered`` (names) is exactly the catalogue's
    ``kind`` ("method" or "network") list, naming what is missing on either side."""
    listed = set(METHOD_NAMES if kind == "method" else NETWORK_NAMES)
    registered = set(registered)
    problems = [f"{kind} {name!r} is registered but not in the catalogue (SSLSegmentLib/catalogue.py)"
                for name in sorted(registered - listed)]
    problems += [f"{kind} {name!r} is in the catalogue (SSLSegmentLib/catalogue.py) but nothing registers it"
                 for name in sorted(listed - registered)]
    if problems:
        raise CatalogueMismatch("; ".join(problems))
    if kind == "method":
        for info in METHODS:
            unknown = [n for n in info.networks if n not in NETWORK_NAMES]
            if unknown:
                raise CatalogueMismatch(f"method {info.name!r} needs networks not in the catalogue: {unknown}")


def measured_figures(name: str) -> str:
    """Method ``name``'s gap closed on the label-efficiency bench, per data set, e.g.
    "ACDC 66 ± 7 % (4 runs), LA 51 ± 6 % (3 runs)", and where it ended worse than
    supervised-only; "" where nothing was measured (the supervised-only baseline itself).
    From ``measured_gain``, which the bench writes from its committed reports."""
    sets = measured_gain.GAP_CLOSED.get(name)
    if not sets:
        return ""
    text = ", ".join(f"{data_set} {gap}{'' if error is None else f' ± {error}'} % ({runs} run{'s' * (runs > 1)})"
                     for data_set, (gap, error, runs) in sets.items())
    below = measured_gain.BELOW_SUPERVISED.get(name)
    return text + (f"; worse than supervised-only on {' and '.join(below)}" if below else "")


MEASURED_MEANING = ("the share of the gap between supervised-only and fully supervised training that a method "
                    f"closed on the label-efficiency bench, {measured_gain.SETTING}")


def measured_text(name: str) -> str:
    """:func:`measured_figures` as a sentence that says what they mean (a tooltip, a hint)."""
    figures = measured_figures(name)
    return f"Gap closed: {figures}. This is {MEASURED_MEANING}." if figures else ""


def listing(kind: str) -> dict[str, tuple[str, str]]:
    """``{name: (description, reference)}`` for ``sslsegment methods`` / ``networks``."""
    return {e.name: (e.description, e.reference) for e in (METHODS if kind == "method" else NETWORKS)}
