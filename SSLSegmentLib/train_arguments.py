"""The ``sslsegment train`` command line, torch-free: its parser, and its arguments turned into
the run's :class:`~.config.TrainConfig` and dataset.

The run's inputs and folder are declared here; every training setting comes from
``TrainConfig``'s options (``options.py``), so a setting is written once. The command line
(``cli.py``), the run-folder claim and ``--resume`` (``training/cli_train.py``) and the Slicer
logic's check of a round's command all parse with it, so the engine never imports the CLI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import BUDGET_ITERATION_CAP, TrainConfig
from .errors import InputError
from .options import add_arguments, values_from_args


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's, one per core). On a busy machine fewer "
                        "threads than cores is much faster: threads waiting for a busy core stall every step")


def add_train_parser(sub) -> argparse.ArgumentParser:
    """The ``train`` sub-command on ``sub`` (argparse's sub-parsers)."""
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
    add_threads(p)
    scale = p.add_argument_group("scaling (multi-GPU: launch with `torchrun --nproc_per_node N -m SSLSegmentLib train ...`)")
    add_arguments(p, TrainConfig, groups={"scaling": scale})
    return p


def train_parser() -> argparse.ArgumentParser:
    """A parser of ``["train", ...]`` alone (what ``sslsegment`` parses for that command)."""
    parser = argparse.ArgumentParser(prog="sslsegment")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig from the parsed ``train`` arguments (each from its option)."""
    values = values_from_args(TrainConfig, args)
    if values["iterations"] is None:  # the one default that depends on another setting
        values["iterations"] = BUDGET_ITERATION_CAP if values["time_budget"] else TrainConfig.iterations
    return TrainConfig(**values)


def load_dataset(args: argparse.Namespace):
    """The run's cases from ``--dataset`` or ``--images``/``--labels``."""
    from .data.cases import discover_dataset, load_dataset_json  # noqa: PLC0415  (reads images: not at import)

    if args.dataset:
        return load_dataset_json(args.dataset)
    if not args.images:
        raise InputError("give --images (and --labels) or --dataset")
    if not args.labels:
        raise InputError("give --labels: training needs at least one labelled case")
    return discover_dataset(args.images, args.labels)
