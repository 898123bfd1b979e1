"""``sslsegment``: train, predict, evaluate, list methods and networks, run the demo.

Exit codes: 0 success, 1 failure (a crash, or training that diverged), 2 bad input (the
message names the case, file or setting and the problem; also a run folder in use or
holding another run), 3 cancelled (cancel file, SIGTERM, Ctrl+C).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from .errors import InputError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 3


def _add_threads(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's, one per core). On a busy machine fewer "
                        "threads than cores is much faster: threads waiting for a busy core stall every step")


def _add_train(sub) -> None:
    """The run's inputs and folder here; every training setting from ``TrainConfig``'s options."""
    from .config import TrainConfig  # noqa: PLC0415
    from .options import add_arguments  # noqa: PLC0415

    p = sub.add_parser("train", help="train a model on labelled and unlabelled images")
    data = p.add_argument_group("data")
    data.add_argument("--images", type=Path, help="folder of images (labelled and unlabelled)")
    data.add_argument("--labels", type=Path, help="folder of labels (labelmaps or .seg.nrrd), matched by case name")
    data.add_argument("--dataset", type=Path, help="dataset.json (nnU-Net/MSD style) instead of --images/--labels")
    p.add_argument("--out", type=Path, help="run folder to create (required unless --resume)")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="go on with the interrupted run in folder RUN, from its last resumable checkpoint, with its "
                        "own settings and data")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its model, checkpoints, logs are deleted first)")
    _add_threads(p)
    scale = p.add_argument_group("scaling (multi-GPU: launch with `torchrun --nproc_per_node N -m SSLSegmentLib train ...`)")
    add_arguments(p, TrainConfig, groups={"scaling": scale})


def _add_others(sub) -> None:
    from .config import TrainConfig  # noqa: PLC0415
    from .options import choices_of  # noqa: PLC0415

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("--model", type=Path, required=True, help="run folder or model.pt")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in --out that this model's predictions did not write (by default refused)")
    p.add_argument("--device", default=TrainConfig.device, choices=choices_of(TrainConfig, "device"))
    p.add_argument("--largest-component", action="store_true",
                   help="keep only each class's largest connected component")
    _add_threads(p)
    p = sub.add_parser("evaluate", help="Dice and HD95 (mm) of predictions against labels")
    p.add_argument("--pred", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even when labelled cases have no prediction (they are still listed)")
    sub.add_parser("methods", help="list the methods")
    sub.add_parser("networks", help="list the networks")
    p = sub.add_parser("demo", help="supervised-only against the default semi-supervised method on synthetic "
                                    "phantoms whose unlabelled scans show what the labels do not")
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    _add_threads(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslsegment", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_others(sub)
    _add_serve(sub)
    return parser


def _add_serve(sub) -> None:
    from .web.server import add_arguments  # noqa: PLC0415 (light: no trame import)

    add_arguments(sub.add_parser("serve", help="the browser UI (needs the web extra); loopback by default"))


def config_from_args(args):
    """The run's TrainConfig from the parsed `train` arguments (each from its option)."""
    from .config import BUDGET_ITERATION_CAP, TrainConfig  # noqa: PLC0415
    from .options import values_from_args  # noqa: PLC0415

    values = values_from_args(TrainConfig, args)
    if values["iterations"] is None:  # the one default that depends on another setting
        values["iterations"] = BUDGET_ITERATION_CAP if values["time_budget"] else TrainConfig.iterations
    return TrainConfig(**values)


def load_dataset(args):
    from .data.cases import discover_dataset, load_dataset_json  # noqa: PLC0415

    if args.dataset:
        return load_dataset_json(args.dataset)
    if not args.images:
        raise InputError("give --images (and --labels) or --dataset")
    if not args.labels:
        raise InputError("give --labels: training needs at least one labelled case")
    return discover_dataset(args.images, args.labels)


def _raise_cancel(signum, frame):
    from .training.trainer import Cancelled  # noqa: PLC0415

    for stop in (signal.SIGTERM, signal.SIGINT):  # one stop is enough: no second exception while cleaning up
        signal.signal(stop, signal.SIG_IGN)
    raise Cancelled()


def run_train(args) -> int:
    """Train into ``--out`` (one run per folder, locked while it runs). Under ``torchrun``
    every rank runs this; rank 0 alone writes the run folder (status, progress, log,
    checkpoints, model, predictions)."""
    from .training.cli_train import run_folder_claimed  # noqa: PLC0415
    from .training.trainer import Cancelled  # noqa: PLC0415

    previous = {stop: signal.signal(stop, _raise_cancel) for stop in (signal.SIGTERM, signal.SIGINT)}
    try:
        with run_folder_claimed(args) as (args, context, run):
            return _train_in(args, context, run)
    except Cancelled:  # stopped before the run began
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def _train_in(args, context, run) -> int:
    from .training import distributed, resume  # noqa: PLC0415
    from .training.divergence import Diverged  # noqa: PLC0415
    from .training.trainer import Cancelled, Trainer  # noqa: PLC0415

    log = run.logger()
    if not context.is_main:
        log.setLevel(logging.WARNING)
    trainer = None
    try:
        run.prepare()
        run.set_status("running", **({"world_size": context.world_size} if context.enabled else {}))
        trainer = Trainer(config_from_args(args), load_dataset(args), run, log, context)
        trainer.setup()
        if args.resume:
            resume.restore(trainer, resume.load(run.checkpoint(resume.KIND)))
        result = trainer.train()
        if args.predict_unlabelled and context.is_main:
            trainer.predict_unlabelled()
        context.barrier()
    except Cancelled:
        log.warning("cancelled")
        run.set_status("cancelled")
        return EXIT_CANCELLED
    except InputError as error:
        log.propagate = False  # log.txt only: the console gets the one line printed below
        log.error("error: %s", error)
        log.propagate = True
        run.set_status("failed", error=str(error))
        if context.is_main:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Diverged as error:  # a failed run, told plainly: no traceback, no model
        log.error("%s", error)
        run.set_status("failed", error=str(error))
        if context.is_main:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # a crash must reach the watcher, with its traceback in the log
        log.error("%s", traceback.format_exc())  # to log.txt and, once, to the console
        run.set_status("failed", error=f"{error.__class__.__name__}: {error}")
        return EXIT_FAILED
    finally:
        # The DDP wrappers hold the process group: free them now, or gloo's threads would be
        # torn down at interpreter exit (std::terminate, SIGABRT) after a successful run.
        trainer = None
        gc.collect()
        distributed.shutdown(context)
    run.set_status("done", best_val_dice=result.best_dice, model=str(run.model))
    log.info("done: %s", run.model)
    return 0


def _leave_if_distributed(code: int) -> int:
    """Under torchrun, end the process as soon as the run is complete and the process group
    destroyed: gloo's worker threads can otherwise abort the interpreter's finalisation
    (``terminate called without an active exception``), turning a finished run into a
    failed launch."""
    from .training.distributed import launched_by_torchrun  # noqa: PLC0415

    if not launched_by_torchrun():
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_predict(args, report_failure=None) -> int:
    from .batch_prediction import describe_case, predict_to_folder  # noqa: PLC0415
    from .data.cases import list_image_cases  # noqa: PLC0415
    from .model_file import load_model  # noqa: PLC0415
    from .training.trainer import resolve_device  # noqa: PLC0415

    device = resolve_device(args.device)
    model = load_model(args.model, device)
    cases = list_image_cases(args.images)
    report = predict_to_folder(model, cases, args.out, device, largest_component=args.largest_component,
                               overwrite=args.overwrite, on_case=lambda *a: print(describe_case(*a), file=sys.stderr))
    print(f"wrote {len(report.scores)} predictions to {args.out}")
    if report.out_of_domain:
        print(f"warning: {report.domain_message()}", file=sys.stderr)
    if report.failures:
        print(f"error: {report.failure_message()}", file=sys.stderr)
        if report_failure is not None:
            report_failure(report.failure_message())
        return EXIT_BAD_INPUT if report.bad_input_only else EXIT_FAILED
    return 0


def run_evaluate(args) -> int:
    from .evaluation import evaluate_folders, format_table, missing_message  # noqa: PLC0415
    from .fileio import atomic_write_json  # noqa: PLC0415

    if args.json:  # before the work: an unwritable report path is found now, not after it
        from .prediction_outputs import prepare_output_folder  # noqa: PLC0415

        if args.json.is_dir():
            raise InputError(f"--json {args.json}: is a folder; give a file name such as {args.json / 'metrics.json'}")
        prepare_output_folder(args.json.parent, option="--json")
    results = evaluate_folders(args.pred, args.labels)
    print(format_table(results))
    if args.json:
        atomic_write_json(args.json, results)
    if results["missing_predictions"]:
        print(f"{'warning' if args.allow_missing else 'error'}: {missing_message(results, args.pred)}",
              file=sys.stderr)
        return 0 if args.allow_missing else EXIT_BAD_INPUT
    return 0


def run_list(registry: dict[str, tuple[str, str]]) -> int:
    width = max(len(name) for name in registry)
    for name, (description, reference) in sorted(registry.items()):
        print(f"{name:<{width}}  {description}" + (f"  [{reference}]" if reference else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print(f"error: --threads must be 1 or more, got {args.threads}; leave it out for one per core",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if getattr(args, "threads", None):
        import torch  # noqa: PLC0415

        torch.set_num_threads(max(1, args.threads))
    try:
        if args.command == "train":
            return _leave_if_distributed(run_train(args))
        if args.command == "predict":
            from .predict_status import run_reporting_status  # noqa: PLC0415

            return run_reporting_status(args.out, run_predict, args)  # OUT/status.json for the panel
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command in ("methods", "networks"):
            from .catalogue import listing  # noqa: PLC0415 (torch-free: the registries agree with it on load)

            return run_list(listing(args.command[:-1]))
        if args.command == "demo":
            from .demo import run_demo  # noqa: PLC0415

            run_demo(args.out, iterations=args.iterations, seed=args.seed)
            return 0
        if args.command == "serve":
            from .web.server import run_serve  # noqa: PLC0415

            return run_serve(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl+C outside a training run (a run ends as cancelled itself)
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    return EXIT_FAILED
