"""``sslsegment``: train, predict, evaluate, list methods and networks, run the demo.

Exit codes: 0 success, 1 failure (a crash, or training that diverged), 2 bad input (the
message names the case, file or setting and the problem; also a run folder in use or
holding another run), 3 cancelled (cancel file, SIGTERM, Ctrl+C).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import DEFAULT_METHOD
from .errors import InputError
from .run_protocol import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED


def _patch(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch size {text!r}: expected numbers like 64,64,64") from None


def _add_threads(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's, one per core). On a busy machine fewer "
                        "threads than cores is much faster: threads waiting for a busy core stall every step")


def _add_train(sub) -> None:
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
    p.add_argument("--checkpoint-interval", type=int, metavar="N",
                   help="write a resumable checkpoint every N iterations (default: a tenth of the run, at most 200)")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"see `sslsegment methods` (default: {DEFAULT_METHOD})")
    p.add_argument("--network", default="unet", help="see `sslsegment networks`")
    p.add_argument("--preset", choices=["auto", "fast-cpu", "balanced", "quality-gpu"],
                   help="default: auto (patch and batch from the free GPU memory) on CUDA, fast-cpu on CPU")
    p.add_argument("--size", choices=["tiny", "small", "base"], help="network size (default: the preset's)")
    p.add_argument("--dim", default="auto", choices=["auto", "2", "3"])
    p.add_argument("--iterations", type=int,
                   help="training iterations (default 2000); with --time-budget, the most it may choose")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train for this many minutes, set-up and prediction of the unlabelled cases included: "
                        "after a short warm-up the iteration count is fixed to fit (recorded in budget.json)")
    p.add_argument("--patch-size", type=_patch, help="z,y,x in 3D or y,x in 2D")
    p.add_argument("--spacing", metavar="RULE_OR_MM",
                   help="training spacing: 'data' (median of the labelled cases), 'fit' (coarser until a case "
                        "fits the patch), one number in mm (isotropic in 3D, in-plane in 2D) or x,y,z; default: "
                        "the preset's (fit on fast-cpu, data otherwise). Predictions keep each image's grid")
    p.add_argument("--labelled-batch", type=int)
    p.add_argument("--unlabelled-batch", type=int)
    p.add_argument("--optimiser", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--lr", type=float)
    p.add_argument("--consistency", type=float, help="maximum unsupervised loss weight (default: the method's)")
    p.add_argument("--dropout", type=float, help="backbone dropout (U-Net; default: the method's)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="method-specific setting, JSON value (repeatable)")
    p.add_argument("--normalisation", choices=["zscore", "ct"], default="zscore")
    p.add_argument("--ct-window", type=float, nargs=2, metavar=("LOW", "HIGH"))
    p.add_argument("--val-cases", type=int, help="labelled cases held out for validation (overrides --validation)")
    p.add_argument("--validation", choices=["auto", "holdout", "none"], default="auto",
                   help="holdout: one labelled case in five validates, the best checkpoint is kept; none: every "
                        "label trains, the last weights are kept; auto (default): holdout from 20 labelled cases on")
    p.add_argument("--val-interval", type=int)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=1337)
    _add_threads(p)
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: mixed precision on CUDA, bf16 on CPUs with native bf16 (AMX, AVX512-BF16), else fp32")
    scale = p.add_argument_group("scaling (multi-GPU: launch with `torchrun --nproc_per_node N -m SSLSegmentLib train ...`)")
    scale.add_argument("--cache-dir", type=Path,
                       help="preprocessed-case cache (default: $SSLSEGMENT_CACHE or .sslsegment-cache beside --out)")
    scale.add_argument("--num-workers", type=int, help="batch-preparing processes (default: 0 on CPU, 4 on CUDA)")
    scale.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                       help="channels-last tensors on CUDA (auto: on in 2D)")
    p.add_argument("--init-model", type=Path, help="start from a previous model.pt (a retraining round)")
    p.add_argument("--largest-component", action="store_true",
                   help="keep only each class's largest connected component in the predictions")
    p.add_argument("--predict-unlabelled", action="store_true",
                   help="after training, predict every unlabelled case into OUT/predictions")


def _add_others(sub) -> None:
    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("--model", type=Path, required=True, help="run folder or model.pt")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in --out that this model's predictions did not write (by default refused)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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
    """The run's TrainConfig from the parsed `train` arguments."""
    from .config import TrainConfig  # noqa: PLC0415
    from .spacing import parse_spacing  # noqa: PLC0415

    options = {}
    for item in args.method_option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return TrainConfig(
        method=args.method, network=args.network, preset=args.preset, size=args.size, dim=args.dim,
        iterations=_iterations(args), time_budget=args.time_budget, spacing=parse_spacing(args.spacing),
        patch_size=args.patch_size, labelled_batch=args.labelled_batch,
        unlabelled_batch=args.unlabelled_batch, optimiser=args.optimiser, lr=args.lr, consistency=args.consistency, dropout=args.dropout,
        method_options=options, normalisation=args.normalisation,
        ct_window=tuple(args.ct_window) if args.ct_window else None, val_cases=args.val_cases,
        validation=args.validation,
        val_interval=args.val_interval, seed=args.seed, device=args.device, amp=not args.no_amp,
        precision=args.precision,
        init_model=str(args.init_model) if args.init_model else None, predict_unlabelled=args.predict_unlabelled,
        largest_component=args.largest_component, checkpoint_interval=getattr(args, "checkpoint_interval", None),
        cache_dir=str(args.cache_dir) if args.cache_dir else None, num_workers=args.num_workers,
        channels_last={"auto": None, "on": True, "off": False}[args.channels_last])


def _iterations(args) -> int:
    from .config import TrainConfig  # noqa: PLC0415
    from .training.budget import DEFAULT_CAP  # noqa: PLC0415

    if args.iterations is not None:
        return args.iterations
    return DEFAULT_CAP if args.time_budget else TrainConfig.iterations


def load_dataset(args):
    from .data.cases import discover_dataset, load_dataset_json  # noqa: PLC0415

    if args.dataset:
        return load_dataset_json(args.dataset)
    if not args.images:
        raise InputError("give --images (and --labels) or --dataset")
    if not args.labels:
        raise InputError("give --labels: training needs at least one labelled case")
    return discover_dataset(args.images, args.labels)


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
            return run_train(args)
        if args.command == "predict":
            from .predict_status import run_reporting_status  # noqa: PLC0415

            return run_reporting_status(args.out, run_predict, args)  # OUT/status.json for the panel
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "methods":
            from .methods import available_methods  # noqa: PLC0415

            return run_list({n: (c.description, c.reference) for n, c in available_methods().items()})
        if args.command == "networks":
            from .networks import available_networks  # noqa: PLC0415

            return run_list({n: (d, "") for n, d in available_networks().items()})
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
