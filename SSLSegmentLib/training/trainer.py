"""The training loop, the same for every method.

The method computes one loss per parameter group; the trainer back-propagates each into
its own group, steps one optimiser per group on the poly schedule, applies mixed
precision on CUDA, validates, keeps the best and last checkpoints, writes progress, and
honours a cancel request. Nothing here knows which method runs.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data.cases import Dataset
from ..errors import InputError
from ..inference import autocast, predict_probabilities
from ..methods import Method, MethodSettings, StepInfo, method_class
from ..methods.base import consistency_weight
from ..metrics import dice_per_class
from ..model_file import load_model, read_model_payload, save_model
from ..networks import build_network
from ..preprocessing import Plan
from ..sampling import BatchStream, PatchSampler, to_tensors
from .data_setup import TrainingData, prepare_training_data
from .run_folder import RunFolder
from .schedules import poly_lr, set_lr


class Cancelled(Exception):
    """The watcher asked the run to stop (a ``cancel`` file, or SIGTERM)."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available")
    if requested not in ("cpu", "cuda"):
        raise InputError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_method(config: TrainConfig, data: TrainingData) -> Method:
    cls = method_class(config.method)
    default = getattr(cls, "default_consistency", None)
    settings = MethodSettings(
        consistency=config.consistency if config.consistency is not None else (default if default is not None else 0.1),
        rampup_fraction=config.rampup_fraction, ema_decay=config.ema_decay, extra=dict(config.method_options))

    def network_factory(name: str | None = None, out_channels: int | None = None):
        return build_network(name or config.network, data.plan.dim, 1, out_channels or data.num_classes, config.size)

    return cls(settings, network_factory, data.num_classes, data.plan.dim)


def build_optimisers(method: Method, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per parameter group; a method may override a group's optimiser
    (DAN's discriminator uses Adam) with ``optimiser_overrides``."""
    overrides = getattr(method, "optimiser_overrides", {}) or {}
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


@dataclass
class TrainResult:
    iterations: int
    best_dice: float | None
    model_source: str


class Trainer:
    """Runs one training run into a run folder."""

    def __init__(self, config: TrainConfig, dataset: Dataset, run: RunFolder, log: logging.Logger | None = None):
        self.run = run
        self.log = log or run.logger()
        self.device = resolve_device(config.device)
        self.config = config.resolved(self.device.type)
        self.dataset = dataset
        self.progress_bar = sys.stderr.isatty()

    # --- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        seed_everything(config.seed)
        initial = read_model_payload(config.init_model) if config.init_model else None
        plan = Plan.from_dict(initial["plan"]) if initial else None
        self.data, cases = prepare_training_data(self.dataset, config, self.log, plan)
        if initial:
            self._check_compatible(initial)
        self.method = build_method(config, self.data).to(self.device)
        if initial:
            self.method.initialise_from(initial["state_dict"])
            self.log.info("networks initialised from %s", config.init_model)
        self.optimisers = build_optimisers(self.method, config)
        self.amp = config.amp and self.device.type == "cuda"
        use_scaler = self.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.stream = self._batch_stream()
        from ..fileio import atomic_write_json  # noqa: PLC0415

        atomic_write_json(self.run.config, {"config": config.to_dict(), "device": str(self.device),
                                            "plan": self.data.plan.to_dict(), "patch_size": list(self.data.patch),
                                            "classes": [c.name for c in self.data.classes]})
        atomic_write_json(self.run.path / "cases.json", cases)

    def _check_compatible(self, initial: dict) -> None:
        previous = [c["name"] for c in initial["classes"]]
        current = [c.name for c in self.data.classes]
        if previous != current:
            raise InputError(f"{self.config.init_model}: the previous model's classes {previous} differ from this "
                             f"round's {current}; start a new model instead")
        spec = initial["network"]
        if (spec["name"], spec["size"]) != (self.config.network, self.config.size):
            raise InputError(f"{self.config.init_model}: the previous model is a {spec['size']} {spec['name']}, "
                             f"this round asks for a {self.config.size} {self.config.network}")

    def _batch_stream(self) -> BatchStream:
        data, config = self.data, self.config
        labelled = PatchSampler([c.image for c in data.train], [c.label for c in data.train], data.patch,
                                data.plan.dim, config.foreground_fraction, seed=config.seed)
        unlabelled = None
        if self.method.uses_unlabelled:
            pool = data.unlabelled or data.train
            if not data.unlabelled:
                self.log.warning("no unlabelled case: the labelled images serve as the unlabelled pool")
            unlabelled = PatchSampler([c.image for c in pool], None, data.patch, data.plan.dim, seed=config.seed + 1)
        prefetch = 2 if self.device.type == "cuda" or config.num_workers > 0 else 0
        return BatchStream(labelled, unlabelled, config.batch_sizes(data.plan.dim), config.seed, prefetch)

    # --- the loop -------------------------------------------------------------------------
    def train(self) -> TrainResult:
        config, total = self.config, self.config.iterations
        val_interval = config.val_interval or max(1, total // 10)
        log_interval = max(1, min(50, total // 100))
        best_dice: float | None = None
        started, losses_sum, logged_steps = time.monotonic(), {}, 0
        batches = iter(self.stream)
        for iteration in range(total):
            if self.run.cancel_requested():
                raise Cancelled()
            losses, lr, weight = self._step(next(batches), iteration)
            for key, value in losses.items():
                losses_sum[key] = losses_sum.get(key, 0.0) + value
            logged_steps += 1
            done = iteration + 1
            val_dice = None
            if self.data.validation and (done % val_interval == 0 or done == total):
                val_dice = self.validate()
                if best_dice is None or val_dice > best_dice:
                    best_dice = val_dice
                    self._save_checkpoint("best", done, best_dice)
            if done % log_interval == 0 or done == total or val_dice is not None:
                record = self._progress_record(done, total, losses_sum, logged_steps, lr, weight, started, val_dice)
                losses_sum, logged_steps = {}, 0
                self.run.add_progress(record)
                self._show(record)
        self._save_checkpoint("last", total, best_dice)
        source = "best" if best_dice is not None else "last"
        self._save_model(source, best_dice)
        return TrainResult(total, best_dice, source)

    def _step(self, batch, iteration: int):
        labelled = to_tensors(batch[0], self.device)
        unlabelled = to_tensors(batch[1], self.device) if batch[1] is not None else None
        info = StepInfo(iteration, self.config.iterations,
                        consistency_weight(self.method.settings, iteration, self.config.iterations))
        lr = poly_lr(1.0, iteration, self.config.iterations)
        for optimiser in self.optimisers.values():
            for group in optimiser.param_groups:
                group["lr"] = group["initial_lr"] * lr
            optimiser.zero_grad(set_to_none=True)
        self.method.train()
        with autocast(self.device, self.amp):
            losses = self.method.training_step(labelled, unlabelled, info)
        groups = self.method.parameter_groups()
        names = list(self.optimisers)
        for index, name in enumerate(names):
            self.scaler.scale(losses[name]).backward(inputs=groups[name], retain_graph=index < len(names) - 1)
        for name in names:
            self.scaler.step(self.optimisers[name])
        self.scaler.update()
        self.method.after_optimiser_step(info)
        # detached tensors stay on the device: .item() only when a record is written
        logged = {k: v.detach() for k, v in losses.items() if torch.is_tensor(v)}
        first = next(iter(self.optimisers.values()))
        return logged, first.param_groups[0]["lr"], info.consistency_weight

    def validate(self) -> float:
        """Mean foreground Dice over the held-out labelled cases (whole volumes, sliding window)."""
        network = self.method.inference_network()
        scores = []
        for case in self.data.validation:
            probabilities = predict_probabilities(network, case.image, self.data.plan.dim, self.data.patch,
                                                  self.device, amp=self.amp)
            prediction = probabilities.argmax(axis=0)
            dice = dice_per_class(prediction, case.label, self.data.num_classes)
            scores.append(float(np.mean(list(dice.values()))))
        self.method.train()
        return float(np.mean(scores))

    # --- outputs --------------------------------------------------------------------------
    def _progress_record(self, done, total, losses_sum, steps, lr, weight, started, val_dice) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        record = {"iteration": done, "total": total,
                  "losses": {k: round(float(v) / steps, 6) for k, v in losses_sum.items()},
                  "lr": lr, "elapsed_s": round(elapsed, 2), "eta_s": round(elapsed / done * (total - done), 1)}
        if self.method.uses_unlabelled:
            record["consistency_weight"] = round(weight, 6)
        if val_dice is not None:
            record["val_dice"] = round(val_dice, 5)
        return record

    def _show(self, record: dict) -> None:
        if not self.progress_bar:
            return
        done, total = record["iteration"], record["total"]
        filled = int(30 * done / total)
        loss = next(iter(record["losses"].values()), float("nan"))
        val = f" val Dice {record['val_dice']:.3f}" if "val_dice" in record else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} loss {loss:.4f}{val} "
                         f"ETA {record['eta_s']:.0f}s ")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _save_checkpoint(self, kind: str, iteration: int, best_dice: float | None) -> None:
        from ..fileio import atomic_path  # noqa: PLC0415

        payload = {"iteration": iteration, "best_dice": best_dice, "method": self.method.name,
                   "state": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
                   "optimisers": {name: opt.state_dict() for name, opt in self.optimisers.items()}}
        with atomic_path(self.run.checkpoint(kind)) as tmp:
            torch.save(payload, tmp)

    def _save_model(self, source: str, best_dice: float | None) -> None:
        if source == "best":
            state = torch.load(self.run.checkpoint("best"), map_location="cpu", weights_only=True)["state"]
            self.method.load_state_dict(state)
        save_model(self.run.model, self.method.inference_network(), network_name=self.config.network,
                   size=self.config.size, classes=self.data.classes, plan=self.data.plan, patch_size=self.data.patch,
                   method=self.method.name, extra={"checkpoint": source, "best_val_dice": best_dice,
                                                   "iterations": self.config.iterations})

    def predict_unlabelled(self) -> dict[str, float]:
        from ..inference import predict_cases  # noqa: PLC0415

        model = load_model(self.run.model, self.device)
        cases = self.dataset.unlabelled

        def report(done: int, total: int, name: str) -> None:
            self.run.add_progress({"phase": "predicting", "case": name, "done": done, "total": total})
            self.log.info("predicted %s (%d/%d)", name, done, total)

        return predict_cases(model, cases, self.run.predictions, self.device, on_case=report)
