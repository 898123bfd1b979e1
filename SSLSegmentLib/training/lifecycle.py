"""How a training run begins and ends, the same for every client: ``sslsegment train``
(under ``torchrun`` too), the Slicer and web child processes (which run that command), the
demo and the benches.

:func:`train_run` takes a prepared run folder from ``running`` to its final status:
``done`` (with the model), ``cancelled`` (cancel file, SIGTERM, Ctrl+C), or ``failed``
with the error (bad input, divergence, a crash with its traceback in ``log.txt``), then
raises for anything but ``done``. :func:`train_command` is the command line around it:
claim the folder, map the outcome to the exit code (:data:`run_protocol.EXIT_OK` ...) and
print the one line the console needs. :func:`cancel_on_signals` turns SIGTERM and SIGINT
into :class:`Cancelled`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from ..run_protocol import (
    CANCELLED, DONE, EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, FAILED, RUNNING,
)
from . import distributed
from .divergence import Diverged
from .run_folder import RunFolder
from .trainer import Cancelled, Trainer

_STOPS = (signal.SIGTERM, signal.SIGINT)


def _raise_cancel(signum, frame):
    for stop in _STOPS:  # one stop is enough: no second exception while cleaning up
        signal.signal(stop, signal.SIG_IGN)
    raise Cancelled()


@contextlib.contextmanager
def cancel_on_signals():
    """While inside, SIGTERM and SIGINT raise :class:`Cancelled` (main thread only), so a
    run ends as ``cancelled`` with its files closed; the previous handlers come back after."""
    previous = {stop: signal.signal(stop, _raise_cancel) for stop in _STOPS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


@dataclass
class Trained:
    """What a run that ended ``done`` leaves to its caller (the trainer itself is freed:
    under torchrun it holds the process group)."""

    result: object
    """:class:`TrainResult`: iterations, best validation Dice, which weights became the model."""
    device: object
    config: object
    """The settings as resolved for the device (preset, size, patch)."""
    data: object
    """The prepared cases: plan, patch, train/validation/unlabelled, cache figures."""
    batch_sizes: tuple
    setup_s: float
    """Seconds from the trainer's creation to the first iteration (data, network, resume)."""


def train_run(run: RunFolder, inputs: Callable[[], tuple], log: logging.Logger | None = None,
              context: distributed.DistributedContext | None = None, resume: bool = False,
              predict_unlabelled: bool = False) -> Trained:
    """Train in ``run`` and write its status; raise, after recording it, for anything but done.

    ``inputs()`` returns ``(TrainConfig, Dataset)``; it is called once the status says
    ``running``, so that its errors (a bad case, a bad setting) are the run's errors.
    ``resume``: go on from the folder's resumable checkpoint, or, when the training had
    already ended (its model written; the run stopped while predicting), with only what was
    left after it. ``predict_unlabelled``:
    predict every unlabelled case into ``run.predictions`` after training (rank 0).
    """
    context = context or distributed.DistributedContext()
    run.prepare()  # the folder exists before its log file opens
    log = log or run.logger()
    if not context.is_main:
        log.setLevel(logging.WARNING)
    trainer = None
    try:
        run.set_status(RUNNING, **({"world_size": context.world_size} if context.enabled else {}))
        config, dataset = inputs()
        started = time.monotonic()
        trainer = Trainer(config, dataset, run, log, context)
        if resume:
            trainer.resumed_cases = run.read_cases()  # before set-up writes this run's
        trainer.setup()
        finished = None
        if resume:
            from . import resume as resuming  # noqa: PLC0415

            finished = resuming.finished_training(run, log)
            if finished is None:
                resuming.restore(trainer, resuming.load(run.checkpoint(resuming.KIND)))
        setup_s = time.monotonic() - started
        result = finished or trainer.train()
        if predict_unlabelled and context.is_main:
            trainer.predict_unlabelled(keep_done=finished is not None)  # the same model: its cases stay
        context.barrier()
        trained = Trained(result, trainer.device, trainer.config, trainer.data, tuple(trainer.batch_sizes), setup_s)
        warnings = list(trainer.warnings)
    except (Cancelled, KeyboardInterrupt):  # KeyboardInterrupt: Ctrl+C outside cancel_on_signals
        log.warning("cancelled")
        run.set_status(CANCELLED)
        raise
    except InputError as error:
        log.propagate = False  # log.txt only: the console gets the one line the caller prints
        log.error("error: %s", error)
        log.propagate = True
        run.set_status(FAILED, error=str(error))
        raise
    except Diverged as error:  # a failed run, told plainly: no traceback, no model
        log.error("%s", error)
        run.set_status(FAILED, error=str(error))
        raise
    except Exception as error:  # a crash must reach the watcher, with its traceback in the log
        log.error("%s", traceback.format_exc())  # to log.txt and, once, to the console
        run.set_status(FAILED, error=f"{error.__class__.__name__}: {error}")
        raise
    finally:
        # The DDP wrappers hold the process group: free them now, or gloo's threads would be
        # torn down at interpreter exit (std::terminate, SIGABRT) after a successful run.
        trainer = None
        gc.collect()
        distributed.shutdown(context)
    run.set_status(DONE, best_val_dice=trained.result.best_dice, model=str(run.model),
                   **({"warnings": warnings} if warnings else {}))
    log.info("done: %s", run.model)
    return trained


def train_command(args, config_from_args: Callable, load_dataset: Callable) -> int:
    """``sslsegment train``: one run per folder (locked while it runs), its exit code.

    Under ``torchrun`` every rank runs this; rank 0 alone writes the run folder (status,
    progress, log, checkpoints, model, predictions) and prints the error line.
    """
    from .cli_train import run_folder_claimed  # noqa: PLC0415

    with cancel_on_signals():
        try:
            with run_folder_claimed(args) as (args, context, run):
                return _exit_code(args, context, run, config_from_args, load_dataset)
        except Cancelled:  # stopped before the run began
            print("cancelled", file=sys.stderr)
            return EXIT_CANCELLED


def _exit_code(args, context, run, config_from_args, load_dataset) -> int:
    try:
        train_run(run, lambda: (config_from_args(args), load_dataset(args)), context=context,
                  resume=bool(args.resume), predict_unlabelled=args.predict_unlabelled)
    except Cancelled:
        return EXIT_CANCELLED
    except InputError as error:
        if context.is_main:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Diverged as error:
        if context.is_main:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:  # already in the log, with its traceback
        return EXIT_FAILED
    return EXIT_OK


def leave_if_distributed(code: int) -> int:
    """Under torchrun, end the process as soon as the run is complete and the process group
    destroyed: gloo's worker threads can otherwise abort the interpreter's finalisation
    (``terminate called without an active exception``), turning a finished run into a
    failed launch."""
    if not distributed.launched_by_torchrun():
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
