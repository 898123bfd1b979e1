"""``sslsegment``: train, predict, evaluate, list methods and networks, run the demo.

Exit codes: 0 success, 1 failure (a crash, or training that diverged), 2 bad input (the
message names the case, file or setting and the problem; also a run folder in use or
holding another run), 3 cancelled (cancel file, SIGTERM, Ctrl+C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import InputError
from .run_protocol import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED
from .train_arguments import add_threads as _add_threads
from .train_arguments import add_train_parser, config_from_args, load_dataset  # noqa: F401  (tests import them here)


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
    add_train_parser(sub)
    _add_others(sub)
    _add_serve(sub)
    return parser


def _add_serve(sub) -> None:
    from .web.server import add_arguments  # noqa: PLC0415 (light: no trame import)

    add_arguments(sub.add_parser("serve", help="the browser UI (needs the web extra); loopback by default"))


def run_train(args) -> int:
    """``sslsegment train``: the run's life cycle (folder, signals, status, exit code) is
    :mod:`.training.lifecycle`'s, shared with the demo and the benches."""
    from .training.lifecycle import leave_if_distributed, train_command  # noqa: PLC0415

    return leave_if_distributed(train_command(args, config_from_args, load_dataset))


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


def run_list(kind: str) -> int:
    """``sslsegment methods`` / ``networks``: the catalogue in its order (the default first),
    each method with what the bench measured for it."""
    from .catalogue import DEFAULT_METHOD, DEFAULT_NETWORK, MEASURED_MEANING, listing, measured_figures  # noqa: PLC0415

    registry = listing(kind)
    default = DEFAULT_METHOD if kind == "method" else DEFAULT_NETWORK
    width = max(len(name) for name in registry) + len(" (default)")
    lines = []
    for name, (description, reference) in registry.items():
        label = f"{name} (default)" if name == default else name
        lines.append(f"{label:<{width}}  {description}" + (f"  [{reference}]" if reference else ""))
        measured = measured_figures(name) if kind == "method" else ""
        if measured:
            lines.append(f"{'':<{width}}  gap closed: {measured}")
    if kind == "method":
        lines.append(f"\ngap closed: {MEASURED_MEANING}.")
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `sslsegment methods | head`: the reader took what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
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
            return run_train(args)
        if args.command == "predict":
            from .predict_status import run_reporting_status  # noqa: PLC0415

            return run_reporting_status(args.out, run_predict, args)  # OUT/status.json for the panel
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command in ("methods", "networks"):
            return run_list(args.command[:-1])  # the catalogue: torch-free, the registries agree with it on load
        if args.command == "demo":
            from .demo import demo_command  # noqa: PLC0415

            return demo_command(args.out, iterations=args.iterations, seed=args.seed)
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
