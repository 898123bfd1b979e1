"""Prediction on whole volumes: MONAI sliding-window inference with Gaussian blending,
results written in each input image's own geometry."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from .data.cases import Case
from .data.io import read_image
from .domain import image_statistics
from .errors import InputError
from .model_file import Model
from .postprocessing import keep_largest_component
from .preprocessing import preprocess, resample_to_geometry

SLICES_PER_CHUNK = 32
"""2D: axial slices predicted together (bounds memory on tall volumes)."""


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when supported (fp16 otherwise), bf16 on CPU; a no-op when not
    ``enabled`` (``precision.mixed_precision`` decides, from the CPU's bf16 support)."""
    if not enabled:
        return torch.autocast("cpu", enabled=False)
    if device.type != "cuda":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def predict_probabilities(network: nn.Module, image: np.ndarray, dim: int, patch: tuple[int, ...],
                          device: torch.device, overlap: float = 0.5, batch_size: int = 4,
                          amp: bool | None = None) -> np.ndarray:
    """Softmax probabilities ``(C, z, y, x)`` of a preprocessed volume ``(z, y, x)``.
    ``amp``: mixed precision; None: on CUDA only (CPU predictions stay fp32).

    3D: overlapping patches blended with a Gaussian weight. 2D: each axial slice is a
    batch item and is tiled in-plane the same way.
    """
    network.eval()
    amp = device.type == "cuda" if amp is None else amp
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    if dim == 3:
        logits = _sliding_window(volume[None, None], patch, network, overlap, batch_size, device, amp)[0]
    else:
        chunks = [
            _sliding_window(volume[start:start + SLICES_PER_CHUNK, None], patch, network, overlap, batch_size, device, amp)
            for start in range(0, volume.shape[0], SLICES_PER_CHUNK)
        ]
        logits = torch.cat(chunks).permute(1, 0, 2, 3)
    return torch.softmax(logits.float(), dim=0).cpu().numpy()


def _sliding_window(inputs, patch, network, overlap, batch_size, device, amp):
    with autocast(device, amp):
        return sliding_window_inference(inputs, roi_size=tuple(patch), sw_batch_size=batch_size,
                                        predictor=network, overlap=overlap, mode="gaussian")


def confidence(probabilities: np.ndarray, label: np.ndarray) -> float:
    """Mean winning-class probability over the predicted foreground (over the whole volume
    when nothing is predicted). Background dominates a whole-volume mean, so it would
    rank every case as confident."""
    top = probabilities.max(axis=0)
    region = label > 0
    return float(top[region].mean() if region.any() else top.mean())


def predict_image(model: Model, image_path: str | os.PathLike, device: torch.device,
                  largest_component: bool = False):
    """Predict one image file: ``(label zyx uint8, confidence, geometry)`` in its own geometry.
    ``largest_component`` keeps only each class's largest connected component."""
    return predict_image_with_statistics(model, image_path, device, largest_component)[:3]


def predict_image_with_statistics(model: Model, image_path: str | os.PathLike, device: torch.device,
                                  largest_component: bool = False):
    """As :func:`predict_image`, plus the image's spacing and intensity statistics (for the
    training-domain check)."""
    image, geometry = read_image(image_path)
    statistics = image_statistics(image, geometry)
    prepared, _, prepared_geometry = preprocess(image, geometry, model.plan)
    probabilities = predict_probabilities(model.network, prepared, model.dim, model.patch_size, device)
    if prepared_geometry != geometry:
        probabilities = resample_to_geometry(probabilities, prepared_geometry, geometry, is_label=False)
    label = probabilities.argmax(axis=0).astype(np.uint8)
    if largest_component:
        label = keep_largest_component(label)
    return label, confidence(probabilities, label), geometry, statistics


def predict_cases(model: Model, cases: list[Case], out_dir: str | os.PathLike, device: torch.device,
                  on_case: Callable[[int, int, str], None] | None = None,
                  largest_component: bool = False, overwrite: bool = False,
                  keep_done: bool = False) -> dict[str, float]:
    """Write ``<case>.seg.nrrd``, ``labelmaps/<case>.nrrd`` and ``confidence.json`` (see
    ``batch_prediction.predict_to_folder``); every case is tried, then InputError names each
    case that failed."""
    from .batch_prediction import predict_to_folder  # noqa: PLC0415

    report = predict_to_folder(model, cases, out_dir, device, largest_component=largest_component,
                               overwrite=overwrite, keep_done=keep_done,
                               on_case=(lambda done, total, name, *_: on_case(done, total, name)) if on_case else None)
    if report.failures:
        raise InputError(report.failure_message())
    return report.scores
