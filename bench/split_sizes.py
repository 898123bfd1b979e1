"""Do the labelled cases differ from the unlabelled pool in the size of what is segmented?

With 7 or 8 labelled cases, the labelled set is a small sample of the patients. Where its
structures are larger or smaller than the unlabelled pool's, anything that asks the
predictions on unlabelled cases to look like those on labelled ones learns that difference
too: DAN's discriminator (``methods/adversarial.py``) can tell the two streams apart by the
size of the predicted heart alone, and its fooling term then pushes the unlabelled
predictions towards the labelled patients' sizes. This bench reads the ground truth of every
training case (the unlabelled ones' labels exist in the benchmark sets, unused in training)
and prints, per class, the mean volume (ml) in the labelled set, the unlabelled pool and the
evaluation set, for the splits of ``label_efficiency.py``. With ``--runs``, it also gives each
label-efficiency run's median predicted volume over the true one on the ACDC evaluation set,
per class (over- or under-segmentation, from the run's ``pred/labelmaps``).

    python bench/split_sizes.py --data ../shared/data [--runs RUN_FOLDER,...]

Writes ``bench/results/split_sizes.{md,json}``. Trains nothing; reads labels only.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import DATA, DATASETS, RESULTS, acdc_labelled_patients, nrrd_names  # noqa: E402

from SSLSegmentLib.data.labels import read_label  # noqa: E402
from SSLSegmentLib.fileio import atomic_write_json, atomic_write_text  # noqa: E402


def class_volumes_ml(label_file: Path, classes: dict[str, str]) -> dict[str, float]:
    """Each foreground class's volume in ml (voxel count times the voxel's volume)."""
    label = read_label(label_file)
    voxel_ml = float(np.prod(label.geometry.spacing)) / 1000.0
    return {name: float((label.array == int(value)).sum()) * voxel_ml for value, name in classes.items() if value != "0"}


def group_means(volumes: dict[str, dict[str, float]], names: list[str]) -> dict[str, float]:
    classes = next(iter(volumes.values())).keys()
    return {c: statistics.fmean(volumes[n][c] for n in names) for c in classes}


def acdc_splits(data: Path) -> list[dict]:
    root = data / "ACDC"
    classes = DATASETS["acdc"]["classes"]
    train = {n: class_volumes_ml(root / "train" / "labels" / n, classes) for n in nrrd_names(root / "train" / "images")}
    evaluation = {n: class_volumes_ml(root / "val" / "labels" / n, classes) for n in nrrd_names(root / "val" / "images")}
    patients = sorted({n.split("_")[0] for n in train})
    splits = []
    for split in ("ssl4mis", "first"):
        labelled = acdc_labelled_patients(patients, split)
        splits.append(summary(f"ACDC, {split} split", train, evaluation,
                              [n for n in train if n.split("_")[0] in labelled]))
    return splits


def la_split(data: Path) -> dict:
    root = data / "LA" / "train"
    names = nrrd_names(root / "images")
    volumes = {n: class_volumes_ml(root / "labels" / n, DATASETS["la"]["classes"]) for n in names}
    train = {n: volumes[n] for n in names[:-16]}
    return summary("LA", train, {n: volumes[n] for n in names[-16:]}, names[:8])


def summary(title: str, train: dict, evaluation: dict, labelled: list[str]) -> dict:
    unlabelled = [n for n in train if n not in labelled]
    means = {"labelled": group_means(train, labelled), "unlabelled": group_means(train, unlabelled),
             "evaluation": group_means(evaluation, list(evaluation))}
    return {"title": title, "volumes": {"labelled": len(labelled), "unlabelled": len(unlabelled),
                                        "evaluation": len(evaluation)},
            "mean_ml": means,
            "labelled_over_unlabelled": {c: means["labelled"][c] / means["unlabelled"][c] if means["unlabelled"][c] else None
                                         for c in means["labelled"]}}


def predicted_over_true(run: Path, truth: Path, classes: dict[str, str]) -> dict[str, float]:
    """Median over the evaluation volumes of predicted / true volume, per class, for a
    label-efficiency run folder (its ``pred/labelmaps``; ``truth``: the evaluation labels)."""
    predictions = sorted((run / "pred" / "labelmaps").glob("*.nrrd"))
    if not predictions:
        raise SystemExit(f"{run}: no pred/labelmaps/*.nrrd (a finished label-efficiency run folder is needed)")
    ratios = [(class_volumes_ml(p, classes), class_volumes_ml(truth / p.name, classes)) for p in predictions]
    present = [c for c in ratios[0][1] if any(true[c] > 0 for _, true in ratios)]  # absent classes have no ratio
    return {c: statistics.median(pred[c] / true[c] for pred, true in ratios if true[c] > 0) for c in present}


def run_label(run: Path) -> str:
    """``method seedN (what its table varies)``: the table folder's name after the budget."""
    table = run.parent.parent.name
    return f"{run.parent.name} {run.name} ({table.split('adamw0.001_', 1)[-1] if 'adamw' in table else table})"


def markdown(splits: list[dict], command: str, runs: dict[str, dict[str, float]] | None = None) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Size of the segmented structures: labelled set, unlabelled pool, evaluation set", "",
             f"Generated by `bench/split_sizes.py` ({stamp}) from the ground truth of every case. Mean volume "
             "per volume (ml); the ratio is labelled over unlabelled.", ""]
    for s in splits:
        n = s["volumes"]
        lines += [f"## {s['title']}", "",
                  f"| class | labelled ({n['labelled']}) | unlabelled ({n['unlabelled']}) | "
                  f"evaluation ({n['evaluation']}) | labelled / unlabelled |", "|---|---|---|---|---|"]
        for c, ratio in s["labelled_over_unlabelled"].items():
            m = s["mean_ml"]
            lines.append(f"| {c} | {m['labelled'][c]:.1f} | {m['unlabelled'][c]:.1f} | {m['evaluation'][c]:.1f} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} |")
        lines.append("")
    if runs:
        classes = list(next(iter(runs.values())))
        lines += ["## Predicted over true volume on the ACDC evaluation set (median over its 20 volumes)", "",
                  "| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        lines += [f"| {label} | " + " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in classes) + " |"
                  for label, r in runs.items()]
        lines.append("")
    lines += [f"Command: `{command}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder laid out like ../shared/data")
    p.add_argument("--datasets", default="acdc,la")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--runs", default="", help="comma-separated ACDC label-efficiency run folders (method/seedN)")
    args = p.parse_args(argv)
    chosen = args.datasets.split(",")
    splits = (acdc_splits(args.data) if "acdc" in chosen else []) + ([la_split(args.data)] if "la" in chosen else [])
    command = "python bench/split_sizes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    truth = args.data / "ACDC" / "val" / "labels"
    runs = {run_label(Path(r)): predicted_over_true(Path(r), truth, DATASETS["acdc"]["classes"])
            for r in args.runs.split(",") if r}
    text = markdown(splits, command.strip(), runs)
    atomic_write_json(args.results / "split_sizes.json", {"splits": splits, "predicted_over_true": runs,
                                                          "command": command.strip()})
    atomic_write_text(args.results / "split_sizes.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
