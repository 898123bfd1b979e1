"""Label efficiency of every semi-supervised method on the real data (ACDC 2D, LA 3D).

Each method is trained through the real CLI (``python -m SSLSegmentLib train``, then
``predict`` and ``evaluate --json``) under the same iteration budget, patch, batch, network
and seed, next to two baselines:

- ``supervised``: the labelled cases only (same labels as the methods);
- ``fully_supervised``: ``supervised`` with every training case labelled.

Splits (no data is copied into the repository: the bench writes resampled copies and
dataset.json files with absolute paths into a scratch folder, git-ignored ``bench/runs``):

- ACDC 2D: the first 7 patients in sorted order (both frames, 14 volumes) labelled, the other
  63 patients (126 volumes) unlabelled; evaluated on ``ACDC/val`` (20 volumes, 10 patients)
  at the original resolution.
- LA 3D: the 80 ``LA/train`` cases in sorted order; the LAST 16 are held out for evaluation
  ("LA-eval16"), the first 8 are labelled, the other 56 unlabelled (fully supervised: the 64
  training cases all labelled); evaluated at the original 0.625 mm resolution.

CPU budget: training images are resampled to a coarser spacing (``--acdc-spacing`` in-plane,
``--la-spacing`` isotropic) before training; the model's plan therefore works at that
spacing, and ``predict`` resamples the original-resolution evaluation images to it and the
probabilities back, so Dice and HD95 (mm) are measured on the original grids.

"Gap closed" = (Dice(method) - Dice(supervised)) / (Dice(fully_supervised) - Dice(supervised)).

CPU preset used for the committed results (2 shared cores; ACDC and LA run side by side as two
processes with one thread each):

- ACDC: 3 x 3 mm in-plane (2x coarser than the data), 2D patch 64 x 64, batch 4 + 4,
  1000 iterations; LA: 2 mm isotropic (3.2x coarser), patch 32 x 48 x 48, batch 2 + 2,
  400 iterations;
- U-Net "small" (16-256 channels) for every method (CTCT adds its Swin U-Net), AdamW lr 1e-3
  with poly decay (SSL4MIS's SGD lr 0.01 stays far from convergence at this budget: ACDC
  fully supervised reached Dice 0.30 with it in 1000 iterations), no validation split (the
  last weights are evaluated), seed 1337.

The md/json/png in ``bench/results`` are rewritten after every run from the run folders on
disk, so partial results survive and several bench processes can share them.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py --datasets acdc \
        --iterations 1000 --acdc-spacing 3 --acdc-patch 64,64 --acdc-batch 4 --deadline 03:58 &
    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py --datasets la \
        --la-iterations 400 --la-spacing 2 --la-patch 32,48,48 --la-batch 2 --deadline 03:48 &

Options: ``--methods a,b`` (baselines always run), ``--resume`` (skip runs whose results
exist for the same budget), ``--deadline HH:MM`` (UTC; start no run after it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.data.io import read_image, write_image  # noqa: E402
from SSLSegmentLib.data.labels import read_label, write_labelmap  # noqa: E402
from SSLSegmentLib.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from SSLSegmentLib.preprocessing import resample_image  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data").resolve()
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / "bench" / "runs" / "label_efficiency"
BASELINES = ("supervised", "fully_supervised")
# Baselines first (the gap needs both), then the methods most likely to matter.
METHODS = ("bcp", "cps", "mean_teacher", "urpc", "fixmatch", "uamt", "cct", "ict", "entropy_minimization",
           "rdrop", "adversarial", "dct", "ctct")
SEED = 1337

DATASETS = {
    "acdc": {"title": "ACDC 2D (7 of 70 patients labelled; eval: ACDC/val, 20 volumes)",
             "classes": {"0": "background", "1": "RV", "2": "Myo", "3": "LV"}, "dim": 2},
    "la": {"title": "LA 3D (8 of 64 labelled; eval: LA-eval16 = last 16 of LA/train sorted)",
           "classes": {"0": "background", "1": "left_atrium"}, "dim": 3},
}


def log(message: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


# --- data preparation -----------------------------------------------------------------------
def resample_copy(image: Path, label: Path | None, out: Path, spacing_of) -> tuple[Path, Path | None]:
    """Resampled copies of one case under ``out/{images,labels}`` (kept when present)."""
    image_out, label_out = out / "images" / image.name, (out / "labels" / label.name if label else None)
    if not image_out.exists():
        array, geometry = read_image(image)
        array, _ = resample_image(array, geometry, spacing_of(geometry))
        image_out.parent.mkdir(parents=True, exist_ok=True)
        write_image(image_out, array, _)
    if label_out is not None and not label_out.exists():
        lab = read_label(label)
        array, geometry = resample_image(lab.array, lab.geometry, spacing_of(lab.geometry), is_label=True)
        label_out.parent.mkdir(parents=True, exist_ok=True)
        write_labelmap(label_out, array.astype("uint8"), geometry)
    return image_out, label_out


def link_folder(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = folder / f.name
        if not link.exists():
            link.symlink_to(f)
    return folder


def write_dataset_json(path: Path, classes: dict, labelled: list[tuple[Path, Path]], unlabelled: list[Path]) -> Path:
    atomic_write_json(path, {"labels": classes,
                             "training": [{"image": str(i), "label": str(l)} for i, l in labelled],
                             "unlabelled": [str(i) for i in unlabelled]})
    return path


def prepare_acdc(args) -> dict:
    root = DATA / "ACDC"
    names = sorted(p.name for p in (root / "train" / "images").glob("*.nrrd"))
    patients = sorted({n.split("_")[0] for n in names})
    labelled_patients = set(patients[:7])
    out = SCRATCH / f"acdc_{args.acdc_spacing:g}mm"
    spacing = lambda g: (args.acdc_spacing, args.acdc_spacing, g.spacing[2])  # noqa: E731  (z kept: 2D)
    cases = [resample_copy(root / "train" / "images" / n, root / "train" / "labels" / n, out, spacing) for n in names]
    few = [c for n, c in zip(names, cases) if n.split("_")[0] in labelled_patients]
    rest = [c[0] for n, c in zip(names, cases) if n.split("_")[0] not in labelled_patients]
    return {"few": write_dataset_json(out / "few.json", DATASETS["acdc"]["classes"], few, rest),
            "all": write_dataset_json(out / "all.json", DATASETS["acdc"]["classes"], cases, []),
            "eval_images": root / "val" / "images", "eval_labels": root / "val" / "labels",
            "split": {"labelled": sorted(labelled_patients), "labelled_volumes": len(few),
                      "unlabelled_volumes": len(rest), "eval": "ACDC/val (20 volumes)"},
            "spacing": f"{args.acdc_spacing:g} x {args.acdc_spacing:g} mm in-plane (z kept, 2D slices)"}


def prepare_la(args) -> dict:
    root = DATA / "LA" / "train"
    names = sorted(p.name for p in (root / "images").glob("*.nrrd"))
    train_names, eval_names = names[:-16], names[-16:]
    out = SCRATCH / f"la_{args.la_spacing:g}mm"
    spacing = lambda g: (args.la_spacing,) * 3  # noqa: E731
    cases = [resample_copy(root / "images" / n, root / "labels" / n, out, spacing) for n in train_names]
    few, rest = cases[:8], [c[0] for c in cases[8:]]
    return {"few": write_dataset_json(out / "few.json", DATASETS["la"]["classes"], few, rest),
            "all": write_dataset_json(out / "all.json", DATASETS["la"]["classes"], cases, []),
            "eval_images": link_folder(SCRATCH / "la_eval16" / "images", [root / "images" / n for n in eval_names]),
            "eval_labels": link_folder(SCRATCH / "la_eval16" / "labels", [root / "labels" / n for n in eval_names]),
            "split": {"labelled": [n.removesuffix(".nrrd") for n in train_names[:8]], "labelled_volumes": 8,
                      "unlabelled_volumes": len(rest), "eval": [n.removesuffix(".nrrd") for n in eval_names]},
            "spacing": f"{args.la_spacing:g} mm isotropic"}


# --- one run --------------------------------------------------------------------------------
def cli(*arguments: str, log_file: Path) -> float:
    started = time.monotonic()
    with open(log_file, "a") as f:
        code = subprocess.call([sys.executable, "-m", "SSLSegmentLib", *arguments], cwd=ROOT, stdout=f,
                               stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
                                   "OMP_NUM_THREADS", "2")})
    if code != 0:
        raise RuntimeError(f"sslsegment {arguments[0]} exited {code}: see {log_file}")
    return time.monotonic() - started


def budget_of(args, key: str) -> dict:
    dim = DATASETS[key]["dim"]
    return {"iterations": args.iterations if key == "acdc" else args.la_iterations,
            "patch": args.acdc_patch if dim == 2 else args.la_patch,
            "labelled_batch": args.acdc_batch if dim == 2 else args.la_batch,
            "unlabelled_batch": args.acdc_batch if dim == 2 else args.la_batch,
            "network": f"unet ({args.size})", "optimiser": args.optimiser, "lr": args.lr,
            "validation": "none (--val-cases 0: the last checkpoint is evaluated)", "seed": SEED, "dim": dim}


def runs_root(key: str, args) -> Path:
    """One folder per dataset and budget, so runs of another budget are never mixed in."""
    b = budget_of(args, key)
    spacing = args.acdc_spacing if key == "acdc" else args.la_spacing
    return SCRATCH / "runs" / (f"{key}_{spacing:g}mm_{b['iterations']}it_p{b['patch'].replace(',', 'x')}"
                               f"_b{b['labelled_batch']}_{args.optimiser}{args.lr:g}")


def run_method(key: str, method: str, prepared: dict, args) -> dict:
    run = runs_root(key, args) / method
    result_file = run / "bench_result.json"
    if args.resume and result_file.exists():
        return json.loads(result_file.read_text())
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    budget = budget_of(args, key)
    dataset = prepared["all"] if method == "fully_supervised" else prepared["few"]
    log_file = run / "bench.log"
    train_s = cli("train", "--dataset", str(dataset), "--method", "supervised" if method in BASELINES else method,
                  "--network", "unet", "--size", args.size, "--dim", str(budget["dim"]),
                  "--iterations", str(budget["iterations"]), "--patch-size", budget["patch"],
                  "--labelled-batch", str(budget["labelled_batch"]),
                  "--unlabelled-batch", str(budget["unlabelled_batch"]), "--val-cases", "0",
                  "--optimiser", args.optimiser, "--lr", str(args.lr),
                  "--seed", str(SEED), "--device", "cpu", "--out", str(run / "train"), log_file=log_file)
    predict_s = cli("predict", "--model", str(run / "train"), "--images", str(prepared["eval_images"]),
                    "--out", str(run / "pred"), "--device", "cpu", log_file=log_file)
    cli("evaluate", "--pred", str(run / "pred"), "--labels", str(prepared["eval_labels"]),
        "--json", str(run / "eval.json"), log_file=log_file)
    evaluation = json.loads((run / "eval.json").read_text())
    mean = evaluation["mean"]
    config = json.loads((run / "train" / "config.json").read_text())
    result = {"dice": mean["all"]["dice"], "hd95": mean["all"]["hd95"],
              "per_class": {c: v for c, v in mean.items() if c != "all"}, "cases": len(evaluation["cases"]),
              "train_s": round(train_s, 1), "predict_s": round(predict_s, 1),
              "s_per_iteration": round(train_s / budget["iterations"], 3), "patch_used": config["patch_size"],
              "finished": utc_now(), **budget}
    atomic_write_json(result_file, result)
    return result


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


# --- reports --------------------------------------------------------------------------------
def gap_closed(results: dict, method: str) -> float | None:
    sup, full = results.get("supervised"), results.get("fully_supervised")
    if not sup or not full or method not in results or abs(full["dice"] - sup["dice"]) < 1e-9:
        return None
    return (results[method]["dice"] - sup["dice"]) / (full["dice"] - sup["dice"])


def collect_report() -> dict:
    """The whole table from the run folders on disk (several bench processes, e.g. ACDC and
    LA side by side, may update it; each rewrites it from everything finished so far)."""
    report = {"datasets": {}, "updated": utc_now(), "commands": []}
    for key in DATASETS:
        meta_file = SCRATCH / f"meta_{key}.json"
        if not meta_file.exists():
            continue
        meta = json.loads(meta_file.read_text())
        results = {}
        for method in meta["planned"]:
            result_file = Path(meta["runs_root"]) / method / "bench_result.json"
            if result_file.exists():
                results[method] = json.loads(result_file.read_text())
        for method in results:
            results[method]["gap_closed"] = gap_closed(results, method)
            names = class_names(key)  # evaluation names classes by label value (label_1...): in value order
            results[method]["per_class"] = {names[i] if i < len(names) else c: v
                                            for i, (c, v) in enumerate(results[method]["per_class"].items())}
        meta["results"] = results
        meta["wall_s"] = sum(r["train_s"] + r["predict_s"] for r in results.values())
        report["datasets"][key] = meta
        report["commands"].append(meta["command"])
    report["seed_check"] = seed_check()
    return report


def seed_check() -> dict:
    """Baselines rerun with another seed (``SCRATCH/seed_check/<key>_<method>_seed<N>``, same
    budget, run by hand with the same CLI arguments): how much Dice moves with the seed alone."""
    found = {}
    for eval_file in sorted((SCRATCH / "seed_check").glob("*/eval.json")):
        mean = json.loads(eval_file.read_text())["mean"]["all"]
        found[eval_file.parent.name] = {"dice": mean["dice"], "hd95": mean["hd95"]}
    return found


def write_reports() -> None:
    report = collect_report()
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "label_efficiency.json", report)
    atomic_write_text(RESULTS / "label_efficiency.md", markdown(report))
    try:
        plot(report, RESULTS / "label_efficiency.png")
    except Exception as error:  # a plotting problem must not lose the figures
        log(f"plot failed: {error}")


def markdown(report: dict) -> str:
    lines = ["# Label efficiency of the semi-supervised methods", "",
             f"Generated by `bench/label_efficiency.py` ({report['updated']} UTC); commands: "
             + "; ".join(f"`{c}`" for c in report["commands"]) + ".",
             "Every method trained through the CLI with the same budget and seed; `supervised` uses the same",
             "labels as the methods, `fully_supervised` every training case labelled.",
             "Gap closed = (Dice - Dice supervised) / (Dice fully supervised - Dice supervised).",
             "Dice and HD95 (mm): mean over foreground classes and evaluation cases, on the original grids, "
             "no post-processing (no largest-component filter: ACDC's HD95 is dominated by scattered false "
             "positives far from the heart).",
             "Training images are resampled to a coarser spacing (below); `predict` resamples the evaluation "
             "images to it and the probabilities back.", ""]
    lines += ["## Summary (goal: the best method closes at least half of the Dice gap on both sets)", "",
              "| data set | supervised | fully supervised | gap | best method | its Dice | gap closed | methods run |",
              "|---|---|---|---|---|---|---|---|"]
    for key, entry in report["datasets"].items():
        results = entry["results"]
        methods = [m for m in results if m not in BASELINES]
        if "supervised" not in results or "fully_supervised" not in results or not methods:
            continue
        best = max(methods, key=lambda m: results[m]["dice"])
        gap = results["fully_supervised"]["dice"] - results["supervised"]["dice"]
        closed = results[best].get("gap_closed")
        lines.append(f"| {key.upper()} | {results['supervised']['dice']:.3f} | {results['fully_supervised']['dice']:.3f} "
                     f"| {gap:.3f} | {best} | {results[best]['dice']:.3f} | "
                     f"{'-' if closed is None else f'{100 * closed:.0f} %'} | {len(methods)} of "
                     f"{len(entry['planned']) - len(BASELINES)} |")
    lines.append("")
    for key, entry in report["datasets"].items():
        b = entry["budget"]
        lines += [f"## {DATASETS[key]['title']}", "",
                  f"Budget: {b['iterations']} iterations, patch {b['patch']}, batch {b['labelled_batch']} labelled + "
                  f"{b['unlabelled_batch']} unlabelled, network {b['network']}, training spacing {entry['spacing']}, "
                  f"{b['optimiser']} lr {b['lr']:g} with poly decay, weight decay 1e-4, seed {b['seed']}; validation: "
                  f"{b['validation']}. CPU: 2 cores shared with other developers' work (load 4-6), ACDC and LA "
                  "benches side by side, one thread each (OMP_NUM_THREADS=1), nice 10.", "",
                  f"Split: labelled {entry['split']['labelled_volumes']} volumes, unlabelled "
                  f"{entry['split']['unlabelled_volumes']}; evaluation: {format_eval(entry['split']['eval'])}.", "",
                  "| method | Dice | HD95 (mm) | gap closed | " + " | ".join(f"{c} Dice" for c in class_names(key))
                  + " | train wall (s) | s/iter |",
                  "|---|---|---|---|" + "---|" * len(class_names(key)) + "---|---|"]
        for method, r in entry["results"].items():
            gap = "-" if r.get("gap_closed") is None or method in BASELINES else f"{100 * r['gap_closed']:.0f} %"
            per_class = " | ".join(f"{v['dice']:.3f}" for v in r["per_class"].values())  # label value order
            label = method if tuple(r.get("patch_used", ())) == tuple(map(int, b["patch"].split(","))) \
                else f"{method} (patch {'x'.join(map(str, r.get('patch_used', [])))})"
            lines.append(f"| {label} | {r['dice']:.3f} | {r['hd95']:.2f} | {gap} | {per_class} | "
                         f"{r['train_s']:.0f} | {r['s_per_iteration']:.2f} |")
        missing = [m for m in entry["planned"] if m not in entry["results"]]
        failed, skipped = entry.get("failed", {}), entry.get("skipped", [])
        if missing:
            lines += ["", "Not run: " + ", ".join(
                m + (f" (failed: {failed[m]})" if m in failed else " (deadline)" if m in skipped else " (pending)")
                for m in missing) + "."]
        lines += ["", f"Wall time of these runs (train + predict): {entry['wall_s'] / 60:.0f} min.", ""]
    if report.get("seed_check"):
        lines += ["## Seed check (the same budget, seed 1338 instead of 1337; not in the table)", "",
                  "| run | Dice | HD95 (mm) | seed 1337 Dice | gap closed (both baselines at this seed) |",
                  "|---|---|---|---|---|"]
        checks = report["seed_check"]
        for name, r in checks.items():
            key, rest = name.split("_", 1)
            method, seed = rest.rsplit("_seed", 1)
            base = report["datasets"].get(key, {}).get("results", {}).get(method)
            sup, full = checks.get(f"{key}_supervised_seed{seed}"), checks.get(f"{key}_fully_supervised_seed{seed}")
            gap = ("-" if method in BASELINES or not sup or not full or full["dice"] == sup["dice"]
                   else f"{100 * (r['dice'] - sup['dice']) / (full['dice'] - sup['dice']):.0f} %")
            lines.append(f"| {name} | {r['dice']:.3f} | {r['hd95']:.2f} | "
                         f"{base['dice']:.3f} | {gap} |" if base else f"| {name} | {r['dice']:.3f} | {r['hd95']:.2f} | - | {gap} |")
        lines += ["", "When the seed alone moves Dice by a sizeable part of the supervised-to-fully-supervised "
                  "gap, single-seed 'gap closed' figures are within noise.", ""]
    lines += ["![plot](label_efficiency.png)", ""]
    return "\n".join(lines)


def class_names(key: str) -> list[str]:
    return [n for v, n in DATASETS[key]["classes"].items() if v != "0"]


def format_eval(value) -> str:
    return value if isinstance(value, str) else f"{len(value)} cases ({', '.join(value)})"


def plot(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    keys = [k for k, e in report["datasets"].items() if e["results"]]
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 2, figsize=(13, 4.2 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        results = report["datasets"][key]["results"]
        methods = [m for m in results if m not in BASELINES]
        for col, metric in enumerate(("dice", "hd95")):
            ax = axes[row][col]
            values = [results[m][metric] for m in methods]
            bars = ax.bar(range(len(methods)), values, color="tab:blue")
            if metric == "dice":  # the figure that matters: share of the label gap closed
                for bar, m in zip(bars, methods):
                    gap = results[m].get("gap_closed")
                    if gap is not None:
                        ax.annotate(f"{100 * gap:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                    ha="center", va="bottom", fontsize=7)
            for name, style, colour in (("supervised", "--", "tab:red"), ("fully_supervised", ":", "tab:green")):
                if name in results:
                    ax.axhline(results[name][metric], linestyle=style, color=colour,
                               label=f"{name.replace('_', ' ')} ({results[name][metric]:.3f})")
            ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
            ax.set_ylabel("Dice" if metric == "dice" else "HD95 (mm)")
            ax.set_title(f"{key.upper()}: " + ("Dice (label: gap closed)" if metric == "dice"
                                                else "HD95 (mm), lower is better"))
            if metric == "dice" and values:
                low = min(values + [results.get("supervised", {}).get("dice", 1.0)])
                ax.set_ylim(max(0.0, low - 0.1), 1.0)
            ax.legend(fontsize=8, loc="lower right" if metric == "dice" else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="acdc,la")
    p.add_argument("--methods", default="all", help="comma-separated; 'all' = every method (baselines always run)")
    p.add_argument("--iterations", type=int, default=600, help="ACDC iterations (every method)")
    p.add_argument("--la-iterations", type=int, default=None, help="LA iterations (default: --iterations)")
    p.add_argument("--acdc-spacing", type=float, default=3.0, help="in-plane training spacing (mm)")
    p.add_argument("--la-spacing", type=float, default=1.5, help="isotropic training spacing (mm)")
    p.add_argument("--acdc-patch", default="64,64")
    p.add_argument("--la-patch", default="32,48,48")
    p.add_argument("--acdc-batch", type=int, default=4, help="labelled and unlabelled batch, 2D")
    p.add_argument("--la-batch", type=int, default=2, help="labelled and unlabelled batch, 3D")
    p.add_argument("--size", default="small", choices=("tiny", "small", "base"))
    p.add_argument("--optimiser", default="adamw", choices=("sgd", "adamw"),
                   help="adamw (default): SSL4MIS's SGD 0.01 is far from converged in a CPU budget")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--deadline", default=None, help="UTC HH:MM: start no run after it")
    p.add_argument("--resume", action="store_true", help="skip runs whose results exist")
    p.add_argument("--report-only", action="store_true", help="only rewrite the md/json/png from the runs on disk")
    args = p.parse_args(argv)
    args.la_iterations = args.la_iterations or args.iterations
    return args


def past_deadline(deadline: str | None) -> bool:
    if not deadline:
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    hour, minute = map(int, deadline.split(":"))
    return (now.hour, now.minute) >= (hour, minute)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        write_reports()
        return 0
    methods = [m for m in METHODS if args.methods == "all" or m in args.methods.split(",")]
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    command = ("nice -n 10 env OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?")
               + " .venv/bin/python bench/label_efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv))
    for key in keys:
        log(f"preparing {key}")
        prepared = (prepare_acdc if key == "acdc" else prepare_la)(args)
        meta_file = SCRATCH / f"meta_{key}.json"
        meta = {"title": DATASETS[key]["title"], "budget": budget_of(args, key), "spacing": prepared["spacing"],
                "split": prepared["split"], "planned": [*BASELINES, *methods], "runs_root": str(runs_root(key, args)),
                "command": command, "failed": {}, "skipped": []}
        if meta_file.exists():  # another process (e.g. a --resume of one method) shares this budget's table
            earlier = json.loads(meta_file.read_text())
            if earlier.get("runs_root") == meta["runs_root"]:
                wanted = set(earlier["planned"]) | set(meta["planned"])
                meta["planned"] = [m for m in (*BASELINES, *METHODS) if m in wanted]
                meta["command"] = earlier["command"] + "` then `" + command
        atomic_write_json(meta_file, meta)
        for method in (*BASELINES, *methods):
            if past_deadline(args.deadline):
                log(f"deadline {args.deadline} UTC passed: {key}/{method} not started")
                meta["skipped"].append(method)
            else:
                log(f"{key}/{method}: training")
                try:
                    result = run_method(key, method, prepared, args)
                except Exception as error:  # one failing method must not stop the table
                    log(f"{key}/{method} FAILED: {error}")
                    meta["failed"][method] = str(error)
                else:
                    log(f"{key}/{method}: Dice {result['dice']:.3f} HD95 {result['hd95']:.2f} mm "
                        f"train {result['train_s']:.0f} s ({result['s_per_iteration']:.2f} s/it)")
            atomic_write_json(meta_file, meta)
            write_reports()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
