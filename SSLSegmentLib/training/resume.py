"""Resumable checkpoints: a killed run goes on from where it was, to the same result.

Every ``checkpoint_interval`` iterations rank 0 writes ``checkpoint_resume.pt``
atomically (temporary name, then rename: a kill while writing leaves the previous one). It
holds everything the rest of the run depends on: the method's state (networks, EMA
teachers, BatchNorm statistics), every optimiser and the gradient scaler, the batch and
patch sizes (after any out-of-memory fallback), the best validation Dice, and the random
number generators of Python, NumPy and torch (CPU and CUDA). The batch sequence is not
stored: the resumed stream starts from the same seed and skips the batches already used
(:class:`~SSLSegmentLib.sampling.BatchStream` ``skip``), so a single-process run resumed
after SIGKILL reaches the uninterrupted run's weights up to float noise. (With several
ranks, the other ranks' random generators are re-seeded rather than restored.)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import InputError
from ..fileio import atomic_path
from ..model_file import read_model_payload
from ..run_protocol import RESUME_CHECKPOINT
from ..sampling import BATCH_STREAMS
from .divergence import check_weights

if TYPE_CHECKING:  # the trainer imports this module
    from .trainer import TrainResult

FORMAT = "sslsegment-resume"
KIND = RESUME_CHECKPOINT
"""``RunFolder.checkpoint(KIND)`` is ``checkpoint_resume.pt``."""


def checkpoint_interval(config, total: int) -> int:
    """Iterations between two resumable checkpoints: ``config.checkpoint_interval``, or a
    tenth of the run (at most 200 iterations, so an hour-long run loses minutes)."""
    return getattr(config, "checkpoint_interval", None) or max(1, min(200, total // 10))


def _rng_state() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(trainer, iteration: int, best_dice: float | None) -> None:
    """Write the resumable checkpoint after ``iteration`` steps (rank 0); never one of a
    diverged run (the weights are checked first)."""
    check_weights(trainer.method, iteration, trainer.config)
    payload = {"format": FORMAT, "iteration": iteration, "best_dice": best_dice, "method": trainer.method.name,
               "state": {k: v.detach().cpu() for k, v in trainer.method.state_dict().items()},
               "optimisers": {name: opt.state_dict() for name, opt in trainer.optimisers.items()},
               "scaler": trainer.scaler.state_dict(), "batch_sizes": list(trainer.batch_sizes),
               "patch": list(trainer.data.patch), "rng": _rng_state(),
               "iterations": trainer.config.iterations,  # the count a --time-budget fixed, if any
               "batch_streams": BATCH_STREAMS}
    with atomic_path(trainer.run.checkpoint(KIND)) as tmp:
        torch.save(payload, tmp)


def load(path: Path) -> dict:
    """The resumable checkpoint at ``path``; InputError saying why it cannot be used."""
    if not path.is_file():
        raise InputError(f"{path.parent}: no resumable checkpoint ({path.name}); the run stopped before its first "
                         "one. Start it again with --overwrite")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file
        raise InputError(f"{path}: not a readable resumable checkpoint ({error.__class__.__name__}); start the run "
                         "again with --overwrite") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not an SSLSegment resumable checkpoint")
    return payload


def check_same_cases(began_with: dict, now: dict, folder: Path) -> None:
    """Refuse to resume on other data than the run began with (``cases.json``: names and
    checksums): going on would give another run under this one's name, its record rewritten.
    Paths may change (a moved folder); contents, cases and classes may not."""
    changes = []
    if began_with.get("classes") != now.get("classes"):
        changes.append(f"classes {began_with.get('classes')} are now {now.get('classes')}")
    for role in ("labelled", "unlabelled"):
        before = {c["name"]: c for c in began_with.get(role, [])}
        after = {c["name"]: c for c in now.get(role, [])}
        changes += [f"{role} case {name} is gone" for name in sorted(before.keys() - after.keys())]
        changes += [f"{role} case {name} is new" for name in sorted(after.keys() - before.keys())]
        for name in sorted(before.keys() & after.keys()):
            changes += [f"the {part} of case {name} changed" for part in ("image", "label")
                        if before[name].get(f"{part}_sha256") != after[name].get(f"{part}_sha256")]
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise InputError(f"--resume {folder}: the data changed since the run began ({shown}). Put it back to "
                         "resume, or train a new run (another --out, or --overwrite)")


def finished_training(run, log) -> TrainResult | None:
    """The result of a training that had ended before its run did, else None.

    The model file is written (atomically) only once the loop is over, and the resumable
    checkpoint is deleted after it: a run killed or failed while predicting its unlabelled
    cases has the model and no checkpoint. Training it again would cost the whole run and
    give another model, so ``--resume`` takes this one and goes on with the prediction.
    """
    from .trainer import TrainResult  # noqa: PLC0415, F811

    if not run.model.is_file():
        return None
    saved = read_model_payload(run.model).get("extra") or {}
    iterations = int(saved.get("iterations") or 0)
    run.add_progress({"event": "resumed", "iteration": iterations, "training": "finished"})
    log.info("resumed after the training (%d iterations, model %s): only the steps after it are left",
             iterations, run.model)
    return TrainResult(iterations, saved.get("best_val_dice"), saved.get("checkpoint") or "last")


def restore(trainer, payload: dict) -> None:
    """Put a set-up trainer where the checkpoint was: states, sizes, RNG, batch position."""
    if payload["method"] != trainer.method.name:
        raise InputError(f"the resumable checkpoint is of method {payload['method']!r}, the run's is "
                         f"{trainer.method.name!r}")
    trainer.method.load_state_dict(payload["state"])
    for name, optimiser in trainer.optimisers.items():
        optimiser.load_state_dict(payload["optimisers"][name])
    trainer.scaler.load_state_dict(payload["scaler"])
    sizes, patch = tuple(payload["batch_sizes"]), tuple(payload["patch"])
    if (sizes, patch) != (tuple(trainer.batch_sizes), tuple(trainer.data.patch)):
        trainer.batch_sizes, trainer.data.patch = sizes, patch
        trainer.stream.close()
        trainer.stream = trainer._batch_stream()
    trainer.stream.skip = payload["iteration"]
    if payload.get("batch_streams") != BATCH_STREAMS and trainer.method.uses_unlabelled:
        trainer.log.warning("the checkpoint was written by a version that drew labelled and unlabelled batches "
                            "from one generator: the batches after iteration %d differ from the interrupted "
                            "run's (the training is as valid, but not the same run)", payload["iteration"])
    trainer.start_iteration = payload["iteration"]
    trainer.resumed_best_dice = payload["best_dice"]
    # A time budget fixed the count before the interruption: go on to that count (the budget is
    # not measured again; the schedule must span the same number of iterations).
    trainer.config.iterations = int(payload.get("iterations", trainer.config.iterations))
    if trainer.context.is_main:
        _set_rng_state(payload["rng"])
    else:
        torch.manual_seed(trainer.config.seed + 7919 * trainer.context.rank + payload["iteration"])
    trainer.run.add_progress({"event": "resumed", "iteration": payload["iteration"]})
    trainer.log.info("resumed from iteration %d of %d", payload["iteration"], trainer.config.iterations)
