"""Why a model file cannot be used, in words a user can act on.

``torch.load``'s own messages for a refused pickle advise ``weights_only=False``, the one
setting that lets a file run code; they are never repeated. A file whose metadata was edited
or damaged (missing keys, wrong types, classes that do not match the weights) is refused
before a network is built from it, naming the field.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

_NOT_OURS = "it is not an SSLSegment model file (train one with `sslsegment train`, or give its run folder)"


def unloadable_message(path: Path, error: BaseException) -> str:
    """What the file is not, from the error ``torch.load(weights_only=True)`` raised."""
    text = str(error)
    if path.stat().st_size == 0:
        return f"{path}: the file is empty (0 bytes); {_NOT_OURS}"
    with open(path, "rb") as file:
        start = file.read(2)
    if start[:1] != b"\x80" and start != b"PK":  # neither a pickle nor a zip archive, as torch.save writes
        return f"{path}: not a PyTorch file (it starts with {start!r}: text or another format); {_NOT_OURS}"
    if isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (f"{path}: the file holds Python objects that an SSLSegment model file never contains, so it was "
                f"not loaded (loading it could run code); {_NOT_OURS}")
    if isinstance(error, (zipfile.BadZipFile, EOFError)) or "zip archive" in text or "central directory" in text:
        return (f"{path}: not a complete PyTorch archive: the file is truncated or corrupt (copy it again), "
                f"or {_NOT_OURS}")
    return f"{path}: cannot be read as a model ({error.__class__.__name__}); the file is corrupt, or {_NOT_OURS}"


def _field(payload: dict, key: str, kind: type | tuple, path: Path) -> Any:
    value = payload.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"{path}: the model file's metadata is damaged or edited: {key!r} is "
                         f"{type(value).__name__ if key in payload else 'missing'}; use the model.pt that "
                         "training wrote, or train again")
    return value


def check_payload(payload: dict, path: Path, supported_version: int) -> None:
    """InputError naming the field when the metadata is missing, inconsistent or too new."""
    version = payload.get("version")
    if isinstance(version, int) and version > supported_version:
        raise InputError(f"{path}: written by a newer SSLSegment (model format version {version}; this one reads "
                         f"up to {supported_version}); update SSLSegment")
    network = _field(payload, "network", dict, path)
    for key, kind in (("name", str), ("size", str), ("dim", int), ("in_channels", int), ("out_channels", int)):
        _field(network, key, kind, path)
    classes = _field(payload, "classes", list, path)
    if not classes or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in classes):
        raise InputError(f"{path}: the model file's metadata is damaged or edited: 'classes' must list named "
                         "classes; use the model.pt that training wrote, or train again")
    if network["out_channels"] != len(classes) + 1:
        raise InputError(f"{path}: the model file's metadata is inconsistent: {len(classes)} classes but "
                         f"{network['out_channels']} network outputs (background + one per class); it was "
                         "edited or damaged, use the model.pt that training wrote")
    plan = _field(payload, "plan", dict, path)
    spacing = plan.get("target_spacing")
    if (plan.get("dim") != network["dim"] or not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in spacing)):
        raise InputError(f"{path}: the model file's metadata is inconsistent: preprocessing plan {plan} for a "
                         f"{network['dim']}D network; use the model.pt that training wrote")
    patch = _field(payload, "patch_size", list, path)
    if len(patch) != network["dim"] or not all(isinstance(p, int) and p > 0 for p in patch):
        raise InputError(f"{path}: the model file's metadata is inconsistent: patch size {patch} for a "
                         f"{network['dim']}D network; use the model.pt that training wrote")
    state = _field(payload, "state_dict", dict, path)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: the model file holds no network weights; use the model.pt that training wrote")


def built(path: Path, what: str, build):
    """``build()``, with an error from it turned into an InputError that names the model file."""
    try:
        return build()
    except InputError as error:
        raise InputError(f"{path}: the model file's {what} cannot be built: {error}") from None
    except Exception as error:  # KeyError, ValueError, RuntimeError (size mismatch) ...
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else error.__class__.__name__
        raise InputError(f"{path}: the model file's {what} does not fit ({first}); the metadata was edited or "
                         "damaged, or the file is from an incompatible SSLSegment version") from error
