"""Few labels: hold one labelled volume out for validation (best checkpoint) or train on all of
them (last weights)? Prints JSON (every run) and a markdown table.

For each seed, both variants train on the same ``--labelled`` volumes of ``--data`` with the
same seed: ``holdout`` (``--validation holdout``: with 6 labels one validates every tenth of
the run and the best checkpoint is kept; the seed picks which) and ``none`` (every label
trains, the last weights are kept). Both are evaluated on the same held-out set (Dice,
foreground classes averaged). The paired difference per seed is what decides the default
``validation="auto"`` in ``training/data_setup.py``.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/validation_holdout.py \\
        [--data ../shared/data/ACDC] [--labelled 6] [--unlabelled 0] [--method supervised] \\
        [--iterations 300] [--seeds 1 2 3] [--spacing 3] [--device auto]

Measured (``bench/results/validation_holdout.md``): ACDC 2D, supervised, 6 labelled volumes,
small U-Net, 3 mm in-plane, 300 iterations, one CPU thread of a shared machine, seeds 1-3:
holdout 0.000 / 0.291 / 0.207, all labels 0.054 / 0.264 / 0.201 (means 0.166 and 0.173).
Holding out wins two seeds by 0.027 and 0.007 and loses one by 0.054, where the held-out
case never got a foreground voxel right, every validation tied at 0 and the first (an
iteration-30 checkpoint) was kept. Weak evidence (short runs far from convergence, 3 seeds);
rerun at a real budget on the GPU, e.g. ``--iterations 3000 --seeds 1 2 3 4 5 --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.config import TrainConfig  # noqa: E402
from SSLSegmentLib.data.cases import Dataset, discover_dataset  # noqa: E402
from SSLSegmentLib.evaluation import evaluate_folders  # noqa: E402
from SSLSegmentLib.inference import predict_cases  # noqa: E402
from SSLSegmentLib.model_file import load_model  # noqa: E402
from SSLSegmentLib.training.lifecycle import train_run  # noqa: E402
from SSLSegmentLib.training.run_folder import RunFolder  # noqa: E402

VARIANTS = ("holdout", "none")


def few_labels(train: Path, labelled: int, unlabelled: int) -> Dataset:
    full = discover_dataset(train / "images", train / "labels")
    cases = full.labelled
    pool = [type(c)(c.name, c.image, None) for c in cases[labelled:labelled + unlabelled]]
    return Dataset(labelled=cases[:labelled], unlabelled=pool, classes=full.classes)


def run_variant(variant: str, seed: int, dataset: Dataset, evaluation: Path, work: Path, args) -> dict:
    run = RunFolder(work / f"{variant}_seed{seed}")
    config = TrainConfig(method=args.method, network="unet", size=args.size, dim=args.dim,
                         iterations=args.iterations, validation=variant, seed=seed, device=args.device,
                         spacing=args.spacing, cache_dir=str(work / "cache"))
    started = time.monotonic()
    trained = train_run(run, lambda: (config, dataset))  # status.json, progress, log.txt as `sslsegment train`
    train_s = time.monotonic() - started
    evaluation_cases = discover_dataset(evaluation / "images", evaluation / "labels").labelled
    predictions = work / f"{variant}_seed{seed}_predictions"
    predict_cases(load_model(run.model, trained.device), evaluation_cases, predictions, trained.device)
    scores = evaluate_folders(predictions, evaluation / "labels")
    held_out = [c.name for c in trained.data.validation]
    return {"variant": variant, "seed": seed, "dice": round(scores["mean"]["all"]["dice"], 4),
            "checkpoint": trained.result.model_source, "best_val_dice": trained.result.best_dice, "held_out": held_out,
            "trained_on": len(trained.data.train), "train_s": round(train_s, 1)}


def summary(runs: list[dict]) -> dict:
    by = {v: {r["seed"]: r["dice"] for r in runs if r["variant"] == v} for v in VARIANTS}
    seeds = sorted(set(by["holdout"]) & set(by["none"]))
    differences = [by["holdout"][s] - by["none"][s] for s in seeds]
    out = {v: {"mean_dice": round(statistics.mean(by[v].values()), 4),
               "sd": round(statistics.stdev(by[v].values()), 4) if len(by[v]) > 1 else None} for v in VARIANTS}
    out["holdout_minus_none"] = {"per_seed": [round(d, 4) for d in differences],
                                 "mean": round(statistics.mean(differences), 4) if differences else None,
                                 "holdout_better_in": sum(d > 0 for d in differences), "seeds": len(seeds)}
    return out


def markdown(report: dict) -> str:
    lines = ["| variant | seed | trained on | checkpoint | Dice |", "|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['trained_on']} | {r['checkpoint']} | {r['dice']:.4f} |")
    s = report["summary"]
    lines.append("")
    lines.append(f"holdout {s['holdout']['mean_dice']} (sd {s['holdout']['sd']}), none {s['none']['mean_dice']} "
                 f"(sd {s['none']['sd']}); holdout - none per seed {s['holdout_minus_none']['per_seed']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ACDC",
                        help="folder with train/{images,labels} and val/{images,labels}")
    parser.add_argument("--labelled", type=int, default=6)
    parser.add_argument("--unlabelled", type=int, default=0)
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--size", default="small")
    parser.add_argument("--dim", default="auto")
    parser.add_argument("--spacing", default="3", help="training spacing (see sslsegment train --spacing)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dataset = few_labels(args.data / "train", args.labelled, args.unlabelled)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for seed in args.seeds:
            for variant in VARIANTS:
                runs.append(run_variant(variant, seed, dataset, args.data / "val", work, args))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    report = {"benchmark": "validation_holdout", "data": str(args.data), "labelled": args.labelled,
              "unlabelled": args.unlabelled, "method": args.method, "iterations": args.iterations,
              "spacing": args.spacing, "size": args.size, "runs": runs, "summary": summary(runs)}
    print(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
