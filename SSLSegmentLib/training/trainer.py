"""The training loop, the same for every method.

The method computes one loss per parameter group; the trainer back-propagates each into
its own group, steps one optimiser per group on the poly schedule, applies mixed
precision on CUDA, validates, keeps the best and last checkpoints, writes progress, and
honours a cancel request. Nothing here knows which method runs.

Scaling pieces live beside it: ``distributed.py`` (torchrun data parallelism: rank 0 writes,
validates and checkpoints, the others wait at a barrier), ``memory.py`` (patch and batch
from the free GPU memory, out-of-memory fallback) and ``data_setup.py`` (the disk cache);
``components.py`` builds the device, method and optimisers, ``outputs.py`` writes progress,
checkpoints and the model.
The step itself never waits for the GPU: losses stay on the device until a progress record
is written, batches arrive pinned and are copied asynchronously.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..cache import default_cache_dir
from ..config import TrainConfig
from ..data.cases import Dataset
from ..errors import InputError
from ..fileio import atomic_write_json
from ..inference import autocast, predict_probabilities
from ..methods import StepInfo
from ..methods.base import consistency_weight
from ..metrics import dice_per_class
from ..model_file import read_model_payload, refuse_non_finite_weights
from ..preprocessing import Plan
from ..sampling import BATCH_STREAMS, BatchStream, PatchSampler, to_tensors
from . import memory, resume
from .budget import TimeBudget
from .components import (  # noqa: F401  (re-exported: the CLI and tests import them from here)
    build_method, build_optimisers, channels_last_format, choose_precision, prepare_optimisers, resolve_device,
    seed_everything,
)
from .data_setup import prepare_training_data
from .distributed import (DataParallelNetworks, DistributedContext, broadcast_state, convert_batchnorm, shard,
                          state_checksum)
from .divergence import check_losses
from .outputs import TrainerOutputs
from .run_folder import RunFolder


class Cancelled(Exception):
    """The watcher asked the run to stop (a ``cancel`` file, or SIGTERM)."""


def backward_each_group(losses: dict, groups: dict, names: list[str], scale=None) -> None:
    """Back-propagate each group's loss into that group's parameters only, keeping the graph
    until the last group (the loss of one group may share the graph of another)."""
    for index, name in enumerate(names):
        loss = losses[name] if scale is None else scale(losses[name])
        loss.backward(inputs=groups[name], retain_graph=index < len(names) - 1)


@dataclass
class TrainResult:
    iterations: int
    best_dice: float | None
    model_source: str


class Trainer(TrainerOutputs):
    """Runs one training run into a run folder (one rank of it under torchrun)."""

    def __init__(self, config: TrainConfig, dataset: Dataset, run: RunFolder, log: logging.Logger | None = None,
                 context: DistributedContext | None = None):
        self.run = run
        self.started = time.monotonic()
        """The clock of ``--time-budget`` (set-up included)."""
        self.log = log or run.logger()
        self.context = context or DistributedContext()
        self.device = resolve_device(config.device, self.context)
        self.config = config.resolved(self.device.type)
        self.dataset = dataset
        self.progress_bar = sys.stderr.isatty() and self.context.is_main
        self.check_memory = memory.FaultInjector.from_env()
        self.warnings = []
        """Called with (batch sizes, patch) before each step: a simulated device for tests."""
        self.start_iteration, self.resumed_best_dice = 0, None
        """Where the loop starts, and the best Dice so far: set by ``resume.restore``."""
        self.resumed_cases: dict | None = None
        """A resumed run's ``cases.json`` as it began: :meth:`setup` refuses other data."""

    # --- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        config, context = self.config, self.context
        seed_everything(config.seed)
        for warning in getattr(self.dataset, "warnings", []) if context.is_main else []:
            self.log.warning("%s", warning)
        initial = read_model_payload(config.init_model) if config.init_model else None
        if initial:
            refuse_non_finite_weights(config.init_model, initial["state_dict"])
        plan = Plan.from_dict(initial["plan"]) if initial else None
        cache_dir = config.cache_dir or default_cache_dir(self.run.path)
        self.data, cases = prepare_training_data(self.dataset, config, self.log, plan, cache_dir, context)
        if self.resumed_cases is not None:  # every rank: all of them stop on the same error
            resume.check_same_cases(self.resumed_cases, cases, self.run.path)
        if initial:
            self._check_compatible(initial)
        method = build_method(config, self.data)
        if initial:
            method.initialise_from(initial["state_dict"])
            self.log.info("networks initialised from %s", config.init_model)
        self.amp, self.memory_format = choose_precision(config, method, self.data.plan.dim, self.data.patch,
                                                        self.device, context, self.log)
        self.method = convert_batchnorm(method, self.device, context).to(self.device)
        if self.memory_format is not None:
            self.method = self.method.to(memory_format=self.memory_format)
        use_scaler = self.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.batch_sizes = config.batch_sizes(self.data.plan.dim)
        if config.sizes_from_free_memory() and self.device.type == "cuda":
            self._size_from_free_memory()
        if context.enabled and (self.device.type == "cuda" or self.check_memory):
            self._probe_memory()
        broadcast_state(self.method, context)
        if context.enabled:
            torch.manual_seed(config.seed + 7919 * context.rank)  # each rank its own noise and augmentation
        self.ddp = DataParallelNetworks(self.method, self.device, context)
        self.optimisers = build_optimisers(self.method, config)
        self.stream = self._batch_stream()
        if context.is_main:
            atomic_write_json(self.run.config, {
                "config": config.to_dict(), "device": str(self.device), "mixed_precision": self.amp,
                "world_size": context.world_size,
                "plan": self.data.plan.to_dict(), "patch_size": list(self.data.patch),
                "batch_sizes": list(self.batch_sizes), "batch_streams": BATCH_STREAMS,
                "classes": [c.name for c in self.data.classes]})
            atomic_write_json(self.run.cases, cases)
            self.run.add_progress({"event": "data_cache", **self.data.cache})

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
        """Patches from the memory-mapped cache; with several ranks, each rank samples from its
        own shard of the cases with its own seed."""
        data, config, context = self.data, self.config, self.context
        seed = config.seed + 1000 * context.rank
        fraction = self.method.labelled_foreground_fraction(config.foreground_fraction)
        labelled = PatchSampler.from_cache(shard(data.train, context, "labelled cases", self.log), data.patch,
                                           data.plan.dim, fraction)
        unlabelled = None
        if self.method.uses_unlabelled:
            pool = data.unlabelled or data.train
            if not data.unlabelled and context.is_main:
                self.log.warning("no unlabelled case: the labelled images serve as the unlabelled pool")
            unlabelled = PatchSampler.from_cache(shard(pool, context, "unlabelled cases", self.log), data.patch,
                                                 data.plan.dim, labelled=False)
        cuda = self.device.type == "cuda"
        prefetch = 2 if cuda or config.num_workers > 0 else 0
        return BatchStream(labelled, unlabelled, self.batch_sizes, seed, prefetch,
                           num_workers=config.num_workers, pin_memory=cuda)

    # --- memory ---------------------------------------------------------------------------
    def _size_from_free_memory(self) -> None:
        """The ``auto`` preset: patch and batch from the free GPU memory, unless given."""
        data, config = self.data, self.config
        probe = data.fit(tuple(2 * data.divisor for _ in range(data.plan.dim)))
        per_voxel = memory.bytes_per_sample_voxel(self.method, data.plan.dim, probe, data.num_classes, self.device,
                                                  autocast(self.device, self.amp))
        free, _ = torch.cuda.mem_get_info(self.device)
        patch, batch = memory.choose_patch_and_batch(free, per_voxel, memory.static_bytes(self.method),
                                                     data.plan.dim, data.fit)
        if config.patch_size is None:
            data.patch = patch
        self.batch_sizes = (config.labelled_batch or batch, config.unlabelled_batch or batch)
        self.log.info("auto preset: %.1f GiB free, about %.0f bytes per voxel per item: patch %s, batches %s",
                      free / 2**30, per_voxel, data.patch, self.batch_sizes)

    def _probe_memory(self) -> None:
        """Distributed runs cannot retry a step that ran out of memory on one rank only (the
        others are inside the gradient all-reduce), so every rank tries one step first on
        its bare networks, shrinks until it fits, and all ranks take the smallest settings."""
        configured = (self.batch_sizes, self.data.patch)
        while True:
            try:
                self._trial_step()
                break
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled
                if not memory.is_out_of_memory(error):
                    raise
                self._shrink_after(error, iteration=0, phase="probe")
        agreed = self.context.minimum([*self.batch_sizes, *self.data.patch])
        self.batch_sizes, self.data.patch = tuple(agreed[:2]), tuple(agreed[2:])
        if (self.batch_sizes, self.data.patch) != configured:
            self.log.warning("all ranks train with batches %s and patch %s", self.batch_sizes, self.data.patch)

    def _trial_step(self) -> None:
        if self.check_memory:
            self.check_memory(self.batch_sizes, self.data.patch)
        stream = self._batch_stream()
        stream.prefetch = 0
        labelled, unlabelled = stream.draw()
        stream.close()
        labelled = to_tensors(labelled, self.device, self.memory_format)
        unlabelled = to_tensors(unlabelled, self.device, self.memory_format) if unlabelled is not None else None
        self.method.train()
        with autocast(self.device, self.amp):
            losses = self.method.training_step(labelled, unlabelled, StepInfo(0, self.config.iterations, 0.0))
        groups = self.method.parameter_groups()
        backward_each_group(losses, groups, list(groups))
        for p in self.method.parameters():
            p.grad = None
        del losses

    def _shrink_after(self, error: BaseException, iteration: int, phase: str = "training") -> None:
        """Smaller batch, then smaller patch, after an out-of-memory error; logged in the
        progress as ``{"event": "oom_fallback", ...}``. Re-raises when nothing can shrink."""
        smaller = memory.shrink(self.batch_sizes, self.data.patch, self.data.divisor)
        for p in self.method.parameters():
            p.grad = None
        memory.release_cached_memory(self.device)
        if smaller is None:
            raise error
        record = {"event": "oom_fallback", "phase": phase, "iteration": iteration, "rank": self.context.rank,
                  "error": str(error).splitlines()[0][:300] if str(error) else error.__class__.__name__,
                  "from": {"batch_sizes": list(self.batch_sizes), "patch": list(self.data.patch)},
                  "to": {"batch_sizes": list(smaller[0]), "patch": list(smaller[1])}}
        self.log.warning("out of memory at iteration %d: retrying with batches %s and patch %s (was %s and %s)",
                         iteration, smaller[0], smaller[1], self.batch_sizes, self.data.patch)
        self.run.add_progress(record)
        self.batch_sizes, self.data.patch = smaller

    # --- the loop -------------------------------------------------------------------------
    def train(self) -> TrainResult:
        config, context = self.config, self.context
        # A resumed run goes on to the count fixed before it stopped; a new one may have a budget.
        budget = TimeBudget.for_trainer(self) if self.start_iteration == 0 else None
        if budget is None:  # a budget warns once it has fixed the count
            self.warn_if_short_run(config.iterations)
        best_dice: float | None = self.resumed_best_dice
        started, losses_sum, logged_steps = time.monotonic(), {}, 0
        self._batches = iter(self.stream)
        try:
            iteration = self.start_iteration
            while iteration < config.iterations:
                total = config.iterations  # a time budget may fix it after its warm-up
                val_interval = config.val_interval or max(1, total // 10)
                log_interval = max(1, min(50, total // 100))
                checkpoint_every = resume.checkpoint_interval(config, total)
                if self._cancel_requested():
                    raise Cancelled()
                losses, lr, weight = self._guarded_step(iteration)
                for key, value in losses.items():
                    losses_sum[key] = losses_sum.get(key, 0.0) + value
                logged_steps += 1
                done = iteration + 1
                validating = bool(self.data.validation) and (done % val_interval == 0 or done == total)
                recording = done % log_interval == 0 or done == total or validating
                if recording:  # a diverged run stops here, before it validates or saves anything
                    losses_sum = self._averaged_over_ranks(losses_sum)
                    check_losses(losses_sum, done, config)
                val_dice = None
                if validating:
                    if context.is_main:
                        val_dice = self.validate()
                        if best_dice is None or val_dice > best_dice:
                            best_dice = val_dice
                            self._save_checkpoint("best", done, best_dice)
                    context.barrier()
                if recording:
                    record = self._progress_record(done, total, losses_sum, logged_steps, lr, weight, started, val_dice)
                    losses_sum, logged_steps = {}, 0
                    self.run.add_progress(record)
                    self._show(record)
                if done % checkpoint_every == 0 and done < total and context.is_main:
                    resume.save(self, done, best_dice)
                iteration = done
                if budget is not None:
                    budget.after_step(done)
        finally:
            self.stream.close()
        total = config.iterations
        self._check_ranks_agree()
        if context.is_main:
            self._save_checkpoint("last", total, best_dice)
        source = "best" if best_dice is not None else "last"
        if context.is_main:
            self._save_model(source, best_dice)
            self.run.checkpoint(resume.KIND).unlink(missing_ok=True)  # a finished run is not resumed
        context.barrier()
        return TrainResult(total, best_dice, source)

    def _cancel_requested(self) -> bool:
        """The cancel file, seen by rank 0 and agreed by every rank (all stop at the same step)."""
        return self.context.any(self.context.is_main and self.run.cancel_requested())

    def _guarded_step(self, iteration: int):
        """One step; on out-of-memory (single process), shrink and retry the same iteration."""
        while True:
            try:
                if self.check_memory:
                    self.check_memory(self.batch_sizes, self.data.patch)
                return self._step(next(self._batches), iteration)
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled
                if not memory.is_out_of_memory(error):
                    raise
                if self.context.enabled:
                    raise RuntimeError(
                        f"out of memory at iteration {iteration} on rank {self.context.rank} after the start-up "
                        "probe; a distributed step cannot be retried on one rank: restart with a smaller "
                        "--patch-size or --labelled-batch/--unlabelled-batch") from error
                self._shrink_after(error, iteration)
                self.stream.close()
                self.stream = self._batch_stream()
                self._batches = iter(self.stream)

    def _averaged_over_ranks(self, losses_sum: dict) -> dict:
        """Logged losses averaged over the ranks (one small collective per progress record)."""
        if not self.context.enabled or not losses_sum:
            return losses_sum
        import torch.distributed as dist  # noqa: PLC0415

        keys = sorted(losses_sum)
        values = torch.stack([torch.as_tensor(losses_sum[k], device=self.device, dtype=torch.float32) for k in keys])
        dist.all_reduce(values)
        values /= self.context.world_size
        return dict(zip(keys, values))

    def _check_ranks_agree(self) -> None:
        """Rank 0's buffers everywhere, then every rank's state checksum, recorded by rank 0:
        the networks (students, teachers, second networks) must be identical on all ranks."""
        if not self.context.enabled:
            return
        self.ddp.synchronise_buffers()
        checksums = self.context.gather(state_checksum(self.method))
        equal = len(set(checksums)) == 1
        self.run.add_progress({"event": "ranks", "world_size": self.context.world_size, "state_sha256": checksums,
                               "equal": equal})
        if self.context.is_main:
            (self.log.info if equal else self.log.error)("state of the %d ranks %s", self.context.world_size,
                                                        "identical" if equal else f"DIFFERS: {checksums}")

    def _step(self, batch, iteration: int):
        labelled = to_tensors(batch[0], self.device, self.memory_format)
        unlabelled = to_tensors(batch[1], self.device, self.memory_format) if batch[1] is not None else None
        info = StepInfo(iteration, self.config.iterations,
                        consistency_weight(self.method.settings, iteration, self.config.iterations))
        prepare_optimisers(self.method, self.optimisers, info)
        self.method.train()
        with self.ddp.active(), autocast(self.device, self.amp):
            losses = self.method.training_step(labelled, unlabelled, info)
        groups = self.method.parameter_groups()
        names = list(self.optimisers)
        backward_each_group(losses, groups, names, self.scaler.scale)
        self.ddp.average_loose_gradients()
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
            image = case.load("image")  # one whole case in memory at a time, read rather than mapped
            probabilities = predict_probabilities(network, image, self.data.plan.dim, self.data.patch,
                                                  self.device, amp=self.amp)
            prediction = probabilities.argmax(axis=0)
            dice = dice_per_class(prediction, case.load("label"), self.data.num_classes)
            scores.append(float(np.mean(list(dice.values()))))
        self.method.train()
        return float(np.mean(scores))
