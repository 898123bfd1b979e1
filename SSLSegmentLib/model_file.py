"""The model file: inference weights plus everything needed to predict with them.

A model file is a plain dictionary of tensors, numbers, strings and lists, saved with
``torch.save`` and always loaded with ``torch.load(..., weights_only=True)``: a model file
from elsewhere can never run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.labels import ClassInfo
from .errors import InputError
from .fileio import atomic_path
from .model_validation import built, check_payload, unloadable_message
from .networks import build_network
from .preprocessing import Plan
from .run_protocol import MODEL_FILE

FORMAT = "sslsegment-model"
VERSION = 1


@dataclass
class Model:
    """A network ready to predict, with its classes and preprocessing plan."""

    network: nn.Module
    classes: list[ClassInfo]
    plan: Plan
    patch_size: tuple[int, ...]
    info: dict[str, Any]

    @property
    def dim(self) -> int:
        return self.plan.dim


def save_model(path: str | os.PathLike, network: nn.Module, *, network_name: str, size: str,
               classes: list[ClassInfo], plan: Plan, patch_size, method: str, extra: dict | None = None,
               domain: dict | None = None) -> None:
    """``domain``: the training images' spacing range and intensity statistics
    (``domain.describe_training_domain``); optional, so older files still load."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "network": {"name": network_name, "size": size, "dim": plan.dim, "in_channels": 1,
                    "out_channels": len(classes) + 1},
        "classes": [{"name": c.name, "color": [float(v) for v in c.color]} for c in classes],
        "plan": plan.to_dict(),
        "patch_size": [int(p) for p in patch_size],
        "method": method,
        "extra": extra or {},
        **({"domain": domain} if domain else {}),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A run folder or a model file -> the model file."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{path}: no model file (train a model first, or give a run folder holding model.pt)")
    return path


def read_model_payload(path: str | os.PathLike) -> dict[str, Any]:
    path = resolve_model_path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refused, truncated file... (never repeat torch's advice)
        raise InputError(unloadable_message(path, error)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: a PyTorch file, but not an SSLSegment model file (no 'format': '{FORMAT}'); "
                         "give the model.pt of a run folder")
    check_payload(payload, path, VERSION)
    return payload


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> Model:
    payload = read_model_payload(path)
    refuse_non_finite_weights(path, payload["state_dict"])
    spec = payload["network"]
    path = resolve_model_path(path)
    network = built(path, "network", lambda: build_network(spec["name"], spec["dim"], spec["in_channels"],
                                                           spec["out_channels"], spec["size"]))
    built(path, "weights", lambda: network.load_state_dict(payload["state_dict"]))
    network.to(device).eval()
    classes = built(path, "class list", lambda: [ClassInfo(c["name"], tuple(c["color"])) for c in payload["classes"]])
    plan = built(path, "preprocessing plan", lambda: Plan.from_dict(payload["plan"]))
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return Model(network, classes, plan, tuple(payload["patch_size"]), info)


def refuse_non_finite_weights(path: str | os.PathLike, state_dict: dict) -> None:
    """A model with NaN or infinite weights (a diverged run) would predict empty masks with
    confidence NaN: refuse it, naming the file."""
    bad = [name for name, tensor in state_dict.items()
           if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise InputError(f"{path}: {len(bad)} weight tensor(s) of this model are NaN or infinite ({bad[0]}...): "
                         "its training diverged. Train again with a lower --lr")
