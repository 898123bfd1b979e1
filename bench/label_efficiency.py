"""Label efficiency of every semi-supervised method on the real data (ACDC 2D, LA 3D).

Each method is trained through the real CLI (``python -m SSLSegmentLib train``, then
``predict`` and ``evaluate --json``) under the same iteration budget, patch, batch, network
and seed, next to two baselines:

- ``supervised``: the labelled cases only (same labels as the methods);
- ``fully_supervised``: ``supervised`` with every training case labelled.

Splits (no data is copied into the repository: the bench writes resampled copies and
dataset.json files with absolute paths into a scratch folder, git-ignored ``bench/runs``):

- ACDC 2D: 7 patients (both frames, 14 volumes) labelled, the other 63 patients (126 volumes)
  unlabelled; evaluated on ``ACDC/val`` (20 volumes, 10 patients) at the original resolution.
  ``--acdc-labelled ssl4mis`` (the default since stop 17) labels SSL4MIS's seven: the first
  patients of its ``data/ACDC/train.list``, a shuffled list whose first 136 slices its scripts
  take as the labelled ones (``labeled_idxs``): :data:`ACDC_SSL4MIS_LABELLED`, from three of
  ACDC's five groups. ``--acdc-labelled first`` labels the first 7 patients by number, as every
  table before stop 17 did: ACDC numbers its patients by group (001-020 dilated
  cardiomyopathy, 021-040 hypertrophic, 041-060 infarction, 061-080 normal, 081-100 abnormal
  right ventricle), so those are all dilated hearts, while the validation patients come from
  every group. Supervised-only training then fails worst on the hypertrophic ones (patients
  028 and 030: LV Dice 0.08 to 0.41 at 1000 iterations, seed 1337), and DAN's discriminator
  can tell a labelled image from an unlabelled one by the image alone
  (``bench/dan_image_shortcut.py``). The two splits' runs go to different folders and tables.
- LA 3D: the 80 ``LA/train`` cases in sorted order; the LAST 16 are held out for evaluation
  ("LA-eval16"), the first 8 are labelled, the other 56 unlabelled (fully supervised: the 64
  training cases all labelled); evaluated at the original 0.625 mm resolution.

CPU budget: training images are resampled to a coarser spacing (``--acdc-spacing`` in-plane,
``--la-spacing`` isotropic) before training; the model's plan therefore works at that
spacing, and ``predict`` resamples the original-resolution evaluation images to it and the
probabilities back, so Dice and HD95 (mm) are measured on the original grids.

"Gap closed" = (Dice(method) - Dice(supervised)) / (Dice(fully_supervised) - Dice(supervised)).

CPU preset (the defaults, and the budget of the committed main tables):

- ACDC: 3 x 3 mm in-plane (2x coarser than the data), 2D patch 128 x 128 (the whole slice,
  as SSL4MIS trains), batch 4 + 4, 3000 iterations; LA: 2 mm isotropic (3.2x coarser), patch
  32 x 48 x 48, batch 2 + 2, 2000 iterations. Shorter budgets are side tables, kept because
  they show what the budget does. At 1000 iterations (``cpu/1000it-patch128``) BCP's teacher
  is still weak when self-training starts and it closes 16 % of ACDC's gap, against about
  half at 3000. ACDC's 64 x 64 windows (``cpu/1000it-patch64``, the earlier preset) never
  hold the whole heart: even fully supervised training leaves scattered false positives
  (Dice 0.58, HD95 ~150 mm) and the gap is 5 points. LA at 400 iterations (``cpu/400it``)
  has a 3-point gap that depends on the patch more than on the labels;
- U-Net "small" (16-256 channels) for every method (CTCT adds its Swin U-Net), AdamW lr 1e-3
  with poly decay (SSL4MIS's SGD lr 0.01 stays far from convergence at this budget: ACDC
  fully supervised reached Dice 0.30 with it in 1000 iterations), no validation split (the
  last weights are evaluated), fp32.

On 2 cores, one thread per run and two runs side by side, one seed of the whole table takes
about 1.5 hours for ACDC without DCT and CTCT (0.1 to 0.5 s/it per run; DCT and CTCT, not yet
run at 3000 iterations, would add about 1.3 hours at their speed on 64 x 64 patches scaled
by the other methods' 1.5 to 2x), and 2.5 hours for LA without CTCT, whose 3D Swin U-Net
alone takes 2 to 3 hours more at LA's 2000 iterations (4 to 5 s/it on one thread).

The md/json/png in ``bench/results`` are rewritten after every run from the run folders on
disk, so partial results survive and several bench processes can share them.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py --jobs 2

Three seeds on one GPU, a dozen runs side by side (the data can travel as a folder laid out
like ``../shared/data``; an H200 ran LA's 45 runs at the earlier 400-iteration budget in 5
minutes, the ``cuda`` tables):

    OMP_NUM_THREADS=1 python bench/label_efficiency.py --seeds 1337,1338,1339 --jobs 12 \
        --device cuda --num-workers 1

Options: ``--methods a,b`` (baselines always run), ``--seeds 1337,1338,1339`` (every run at
each seed; the tables give the mean and standard deviation over seeds, and "gap closed" from
the means), ``--jobs N`` (runs side by side, for a GPU or a many-core machine), ``--device
cuda``, ``--data DIR`` (a folder laid out like ``../shared/data``), ``--resume`` (skip runs
whose results exist for the same budget; a run killed mid-training goes on from its last
checkpoint, a tenth of the run at most behind), ``--deadline HH:MM`` (UTC, its next occurrence) or
``--time-limit S`` (start no run after it), ``--report-only`` (rewrite the md/json/png from the
runs on disk), ``--batch-streams interleaved`` (with ``--report-only``: the folders of runs
before stop 19, whose labelled and unlabelled batches came from one generator).

Run folders: ``bench/runs/label_efficiency/runs/<budget>[_cuda]/<method>/seed<N>``; each budget
folder holds a ``meta.json`` (budget, split, machine, commands), and ``tables.json`` names
the budget folder reported for each data set and device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from goals import markdown_lines as goal_lines  # noqa: E402  (bench/goals.py, beside this file)
from schedule import RunQueue  # noqa: E402  (bench/schedule.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib import catalogue  # noqa: E402
from SSLSegmentLib.data.io import read_image, write_image  # noqa: E402
from SSLSegmentLib.data.labels import read_label, write_labelmap  # noqa: E402
from SSLSegmentLib.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from SSLSegmentLib.preprocessing import resample_image  # noqa: E402
from SSLSegmentLib.run_protocol import (  # noqa: E402
    DONE, MODEL_FILE, RESUME_CHECKPOINT, checkpoint_name, read_progress, read_run_status,
)
from SSLSegmentLib.sampling import BATCH_STREAMS  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data").resolve()
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / "bench" / "runs" / "label_efficiency"
BASELINES = ("supervised", "fully_supervised")
STREAMS_TEXT = {BATCH_STREAMS: "from separate generators (a method's labelled batches are supervised-only's at each seed)",
                "interleaved": "from one generator in turn (runs before stop 19: a method's labelled batches differ "
                               "from supervised-only's at the same seed)"}
# Baselines first (the gap needs both), then the methods in the order of the earlier results,
# then any other method of the catalogue (a method added later runs too).
_EARLIER_ORDER = ("fixmatch", "urpc", "cps", "ctct", "bcp", "mean_teacher", "cct", "entropy_minimization", "uamt",
                  "ict", "rdrop", "dct", "adversarial")
METHODS = tuple(sorted((m.name for m in catalogue.METHODS if m.name != "supervised"),
                       key=lambda m: (_EARLIER_ORDER + (m,)).index(m)))

ACDC_SSL4MIS_LABELLED = ("patient099", "patient038", "patient050", "patient100", "patient058", "patient021",
                         "patient049")
"""SSL4MIS's 7 labelled ACDC patients, in its ``train.list`` order (136 slices: its
``patients_to_slices(..., 7)``); abnormal right ventricle, hypertrophic and infarction cases."""
ACDC_SPLITS = ("ssl4mis", "first")
ACDC_SPLIT_TEXT = {"ssl4mis": "SSL4MIS's seven", "first": "the first 7 by number"}

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


def nrrd_names(folder: Path) -> list[str]:
    """The NRRD images of a data folder, sorted; none is an error naming the folder (a wrong
    ``--data`` used to surface as "lacks SSL4MIS's labelled patients")."""
    names = sorted(p.name for p in folder.glob("*.nrrd"))
    if not names:
        raise SystemExit(f"no NRRD images in {folder}: --data must name a folder laid out like ../shared/data")
    return names


def acdc_labelled_patients(patients: list[str], split: str) -> set[str]:
    """The 7 labelled patients of ``--acdc-labelled``: SSL4MIS's, or the first 7 by number."""
    if split == "first":
        return set(sorted(patients)[:7])
    missing = sorted(set(ACDC_SSL4MIS_LABELLED) - set(patients))
    if missing:
        raise SystemExit(f"ACDC/train lacks SSL4MIS's labelled patients {', '.join(missing)}: "
                         "use --acdc-labelled first, or the data laid out as ../shared/data")
    return set(ACDC_SSL4MIS_LABELLED)


def prepare_acdc(args) -> dict:
    root = args.data / "ACDC"
    names = nrrd_names(root / "train" / "images")
    patients = sorted({n.split("_")[0] for n in names})
    labelled_patients = acdc_labelled_patients(patients, args.acdc_labelled)
    out = SCRATCH / f"acdc_{args.acdc_spacing:g}mm"
    spacing = lambda g: (args.acdc_spacing, args.acdc_spacing, g.spacing[2])  # noqa: E731  (z kept: 2D)
    cases = [resample_copy(root / "train" / "images" / n, root / "train" / "labels" / n, out, spacing) for n in names]
    few = [c for n, c in zip(names, cases) if n.split("_")[0] in labelled_patients]
    rest = [c[0] for n, c in zip(names, cases) if n.split("_")[0] not in labelled_patients]
    few_json = "few.json" if args.acdc_labelled == "first" else f"few_{args.acdc_labelled}.json"
    return {"few": write_dataset_json(out / few_json, DATASETS["acdc"]["classes"], few, rest),
            "all": write_dataset_json(out / "all.json", DATASETS["acdc"]["classes"], cases, []),
            "eval_images": root / "val" / "images", "eval_labels": root / "val" / "labels",
            "split": {"labelled": sorted(labelled_patients), "labelled_volumes": len(few),
                      "unlabelled_volumes": len(rest), "eval": "ACDC/val (20 volumes)",
                      "labelled_by": ACDC_SPLIT_TEXT[args.acdc_labelled]},
            "spacing": f"{args.acdc_spacing:g} x {args.acdc_spacing:g} mm in-plane (z kept, 2D slices)"}


def prepare_la(args) -> dict:
    root = args.data / "LA" / "train"
    names = nrrd_names(root / "images")
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
            "precision": "bf16 autocast" if args.amp and args.device == "cuda" else "fp32",
            "validation": validation_of(args.val_cases), "dim": dim,
            **({"method_options": sorted(args.method_option)} if args.method_option else {}),
            **({"method_dropout": args.dropout} if args.dropout is not None else {}),
            **({"method_consistency": args.consistency} if args.consistency is not None else {})}


def validation_of(val_cases: int) -> str:
    """The budget's validation line: none (the product's default below 20 labelled cases) or
    ``--val-cases N`` held out, the best checkpoint kept (the question of ``validation_holdout.py``)."""
    if not val_cases:
        return "none (--val-cases 0: the last checkpoint is evaluated)"
    return f"{val_cases} labelled case(s) held out (--val-cases {val_cases}: the best checkpoint on them is evaluated)"


def labelled_by(split: dict) -> str:
    """`` (patients ...: how they were chosen)`` where the split says (ACDC since stop 17)."""
    return f" (patients {', '.join(split['labelled'])}: {split['labelled_by']})" if "labelled_by" in split else ""


def runs_root(key: str, args) -> Path:
    """One folder per dataset, budget and device, so runs of another budget are never mixed in."""
    b = budget_of(args, key)
    spacing = args.acdc_spacing if key == "acdc" else args.la_spacing
    return SCRATCH / "runs" / (f"{key}_{spacing:g}mm_{b['iterations']}it_p{b['patch'].replace(',', 'x')}"
                               f"_b{b['labelled_batch']}_{args.optimiser}{args.lr:g}"
                               + streams_suffix(args.batch_streams)
                               + ("" if args.device == "cpu" else f"_{args.device}")
                               + ("_amp" if b["precision"] != "fp32" else "")
                               + "".join(f"_{option}" for option in b.get("method_options", []))
                               + (f"_dropout{b['method_dropout']:g}" if "method_dropout" in b else "")
                               + (f"_consistency{b['method_consistency']:g}" if "method_consistency" in b else "")
                               + (f"_val{args.val_cases}" if args.val_cases else "")
                               + split_suffix(key, args.acdc_labelled))


def streams_suffix(batch_streams: str) -> str:
    """``_paired`` for runs whose labelled and unlabelled batches come from separate generators
    (``sampling.BATCH_STREAMS``, since stop 19: a method sees supervised-only's labelled
    batches at the same seed). Nothing for the folders of earlier runs, which drew both from
    one generator; ``--batch-streams interleaved`` reports them, and ``--resume`` can never
    pair them with runs of this code."""
    return "_paired" if batch_streams == BATCH_STREAMS else ""


def check_batch_streams(parser: argparse.ArgumentParser, args) -> None:
    """This code draws paired streams only: the earlier folders are read, never added to."""
    if args.batch_streams != BATCH_STREAMS and not args.report_only:
        parser.error("--batch-streams interleaved reports the runs of earlier code; it trains nothing "
                     "(add --report-only)")


def add_batch_streams_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-streams", default=BATCH_STREAMS, choices=(BATCH_STREAMS, "interleaved"),
                        help="the runs folder: paired (this code) or interleaved (runs before stop 19, report only)")


def split_suffix(key: str, acdc_labelled: str) -> str:
    """``_ssl4mis-split`` for ACDC with SSL4MIS's labelled patients; nothing for the first 7 by
    number, the split of every folder before stop 17."""
    return "_ssl4mis-split" if key == "acdc" and acdc_labelled == "ssl4mis" else ""


def table_tag(key: str, args) -> str:
    """The table's name after ``key/device``: the split (ACDC), ``paired-streams`` (runs of this
    code, beside the earlier tables rather than in their place) and ``--tag``."""
    streams = "paired-streams" if args.batch_streams == BATCH_STREAMS else ""
    return "/".join(t for t in (split_suffix(key, args.acdc_labelled).lstrip("_"), streams, args.tag) if t)


def training_done(train_folder: Path) -> bool:
    """A training that ended as ``done``: a bench run killed while predicting or evaluating
    its cases only does those again."""
    return (read_run_status(train_folder) or {}).get("state") == DONE


def interrupted_training(train_folder: Path) -> bool:
    """A training that stopped before its status said done, leaving a resumable checkpoint or
    its model (``sslsegment train --resume`` goes on with it, with its own settings)."""
    left = any((train_folder / name).is_file() for name in (checkpoint_name(RESUME_CHECKPOINT), MODEL_FILE))
    return left and not training_done(train_folder)


def train_arguments(method: str, seed: int, budget: dict, prepared: dict, run: Path, args) -> list[str]:
    """``sslsegment train`` for a new run of ``method`` at ``seed`` into ``run/train``."""
    dataset = prepared["all"] if method == "fully_supervised" else prepared["few"]
    # One preprocessing cache for every run of the bench (keyed by file checksums and settings).
    extra = ["--cache-dir", str(SCRATCH / ".sslsegment-cache")]
    extra += ["--num-workers", str(args.num_workers)] if args.num_workers is not None else []
    # a loss option (catalogue.COMMON_OPTIONS) applies to the baselines too: the gap is measured with it
    options = [o for o in args.method_option if method not in BASELINES or o.split("=")[0] in catalogue.COMMON_OPTIONS]
    extra += [a for o in options for a in ("--method-option", o)]
    extra += [] if method in BASELINES or args.dropout is None else ["--dropout", f"{args.dropout:g}"]
    extra += [] if method in BASELINES or args.consistency is None else ["--consistency", f"{args.consistency:g}"]
    return ["train", "--dataset", str(dataset), "--method", "supervised" if method in BASELINES else method,
            "--network", "unet", "--size", args.size, "--dim", str(budget["dim"]),
            "--iterations", str(budget["iterations"]), "--patch-size", budget["patch"],
            "--labelled-batch", str(budget["labelled_batch"]),
            "--unlabelled-batch", str(budget["unlabelled_batch"]), "--val-cases", str(args.val_cases),
            "--optimiser", args.optimiser, "--lr", str(args.lr), *([] if args.amp else ["--no-amp"]),
            "--seed", str(seed), "--device", args.device, *extra, "--out", str(run / "train"),
            # the bench resamples its own copies and labels CPU runs fp32: keep the
            # product's CPU defaults (spacing "fit", bf16 on AMX) out of its tables
            "--spacing", "data", *([] if args.device == "cuda" else ["--precision", "fp32"])]


def run_method(key: str, method: str, seed: int, prepared: dict, args) -> dict:
    run = runs_root(key, args) / method / f"seed{seed}"
    result_file = run / "bench_result.json"
    if args.resume and result_file.exists():
        return json.loads(result_file.read_text())
    budget = budget_of(args, key)
    log_file = run / "bench.log"
    if args.resume and training_done(run / "train"):
        train_s = loop_seconds(run / "train")  # its loop alone: the start-up went unrecorded
    elif args.resume and interrupted_training(run / "train"):
        # an hours-long run (CTCT on LA) goes on from its last checkpoint, in this or a later session
        earlier_s = loop_seconds(run / "train")
        train_s = earlier_s + cli("train", "--resume", str(run / "train"), log_file=log_file)
    else:
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        train_s = cli(*train_arguments(method, seed, budget, prepared, run, args), log_file=log_file)
    predict_s = cli("predict", "--model", str(run / "train"), "--images", str(prepared["eval_images"]),
                    "--out", str(run / "pred"), "--device", args.device, log_file=log_file)
    cli("evaluate", "--pred", str(run / "pred"), "--labels", str(prepared["eval_labels"]),
        "--json", str(run / "eval.json"), log_file=log_file)
    evaluation = json.loads((run / "eval.json").read_text())
    mean = evaluation["mean"]
    config = json.loads((run / "train" / "config.json").read_text())
    result = {"dice": mean["all"]["dice"], "hd95": mean["all"]["hd95"],
              "per_class": {c: v for c, v in mean.items() if c != "all"}, "cases": len(evaluation["cases"]),
              "train_s": round(train_s, 1), "predict_s": round(predict_s, 1),
              "s_per_iteration": round(train_s / budget["iterations"], 3), "patch_used": config["patch_size"],
              "loop_s_per_iteration": loop_seconds_per_iteration(run / "train"),
              "finished": utc_now(), **budget, "seed": seed,
              **({"resumed_from": resumed} if (resumed := resumed_iterations(run / "train")) else {})}
    atomic_write_json(result_file, result)
    return result


def loop_segments(train_folder: Path) -> list[tuple[int, float]]:
    """``(iterations, seconds)`` of each stretch of the training loop: one for a run trained
    straight through, one more per ``--resume`` (whose progress records start their clock at
    the checkpoint's iteration). A killed stretch counts the iterations it ran past its last
    checkpoint too: they were paid for, then run again."""
    segments, start, last = [], 0, None
    for record in read_progress(train_folder):
        if record.get("event") == "resumed":
            if last is not None:
                segments.append((last[0] - start, last[1]))
            start, last = record["iteration"], None
        elif "iteration" in record and "elapsed_s" in record:
            last = (record["iteration"], record["elapsed_s"])
    if last is not None:
        segments.append((last[0] - start, last[1]))
    return segments


def resumed_iterations(train_folder: Path) -> list[int]:
    """The checkpoints' iterations a run went on from (``--resume``), in order."""
    return [r["iteration"] for r in read_progress(train_folder) if r.get("event") == "resumed"]


def loop_seconds(train_folder: Path) -> float:
    """Seconds the training loop has run so far, over all its stretches."""
    return sum(seconds for _, seconds in loop_segments(train_folder))


def loop_seconds_per_iteration(train_folder: Path) -> float | None:
    """Seconds per iteration of the training loop alone (its progress records' elapsed time
    over their iterations, every stretch of a resumed run included), without start-up, caching
    and saving: what a longer budget scales."""
    segments = [(n, seconds) for n, seconds in loop_segments(train_folder) if n > 0]
    if not segments:
        return None
    return round(sum(seconds for _, seconds in segments) / sum(n for n, _ in segments), 4)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def describe_machine(device: str) -> str:
    cores = f"{os.cpu_count()} CPU cores"
    if device != "cuda":
        return cores
    import torch  # noqa: PLC0415  (only for the GPU's name)

    return f"{torch.cuda.get_device_name(0)} GPU, {cores}"


# --- aggregation over seeds -----------------------------------------------------------------
def gap_closed(dice: float, sup: float, full: float) -> float | None:
    return None if abs(full - sup) < 1e-9 else (dice - sup) / (full - sup)


def summarise(method: str, per_seed: dict[int, dict], baselines: dict[str, dict[int, dict]]) -> dict:
    """Mean and standard deviation over seeds; "gap closed" from the means over the seeds at which
    the method and both baselines ran (paired), and at each of those seeds alone."""
    seeds = sorted(per_seed)
    dice = [per_seed[s]["dice"] for s in seeds]
    first = per_seed[seeds[0]]
    summary = {"seeds": seeds, "n": len(seeds), "dice": statistics.fmean(dice),
               "dice_sd": statistics.stdev(dice) if len(dice) > 1 else None,
               "hd95": statistics.fmean([per_seed[s]["hd95"] for s in seeds]),
               "per_class": {c: {m: statistics.fmean([per_seed[s]["per_class"][c][m] for s in seeds]) for m in ("dice", "hd95")}
                             for c in first["per_class"]},
               "s_per_iteration": statistics.fmean([per_seed[s]["s_per_iteration"] for s in seeds]),
               "train_s": sum(per_seed[s]["train_s"] for s in seeds),
               "predict_s": sum(per_seed[s]["predict_s"] for s in seeds),
               "patch_used": first.get("patch_used"), "gap_closed": None, "gap_closed_per_seed": {}}
    paired = [s for s in seeds if all(s in baselines.get(b, {}) for b in BASELINES)]
    if paired and method not in BASELINES:
        sup = statistics.fmean([baselines["supervised"][s]["dice"] for s in paired])
        full = statistics.fmean([baselines["fully_supervised"][s]["dice"] for s in paired])
        summary["gap_closed"] = gap_closed(statistics.fmean([per_seed[s]["dice"] for s in paired]), sup, full)
        summary["gap_closed_per_seed"] = {s: gap_closed(per_seed[s]["dice"], baselines["supervised"][s]["dice"],
                                                        baselines["fully_supervised"][s]["dice"]) for s in paired}
    return summary


# --- reports --------------------------------------------------------------------------------
def load_tables(scratch: Path | None = None) -> dict:
    file = (scratch or SCRATCH) / "tables.json"
    return json.loads(file.read_text()) if file.exists() else {}


def register_table(table: str, folder: str | None, scratch: Path | None = None) -> None:
    """``tables.json``: the table (``key/device[/tag]``) is reported from the budget folder;
    ``folder=None`` stops reporting it (its folder stays)."""
    tables = {**load_tables(scratch), table: folder}
    if folder is None:
        tables.pop(table)
    atomic_write_json((scratch or SCRATCH) / "tables.json", dict(sorted(tables.items())))


def merged_planned(earlier: list[str], planned: list[str]) -> list[str]:
    """The methods of two commands on one budget folder, in the bench's order."""
    wanted = set(earlier) | set(planned)
    return [m for m in (*BASELINES, *METHODS) if m in wanted]


def collect_report() -> dict:
    """Every registered table from the run folders on disk (several bench processes, e.g. ACDC
    and LA side by side, may update it; each rewrites it from everything finished so far)."""
    report = {"tables": {}, "updated": utc_now()}
    for table, folder in load_tables().items():
        root = SCRATCH / "runs" / folder
        if not (root / "meta.json").exists():
            continue
        meta = json.loads((root / "meta.json").read_text())
        key = table.split("/")[0]
        names = class_names(key)  # evaluation names classes by label value (label_1...): in value order
        runs: dict[str, dict[int, dict]] = {}
        for method in meta["planned"]:
            for result_file in sorted((root / method).glob("seed*/bench_result.json")):
                result = json.loads(result_file.read_text())
                result["per_class"] = {names[i] if i < len(names) else c: v
                                       for i, (c, v) in enumerate(result["per_class"].items())}
                runs.setdefault(method, {})[int(result_file.parent.name.removeprefix("seed"))] = result
        baselines = {b: runs[b] for b in BASELINES if b in runs}
        meta["results"] = {m: summarise(m, per_seed, baselines) for m, per_seed in runs.items()}
        meta["runs"] = {m: {str(s): r for s, r in per_seed.items()} for m, per_seed in runs.items()}
        meta["wall_s"] = sum(r["train_s"] + r["predict_s"] for per_seed in runs.values() for r in per_seed.values())
        meta["key"] = key
        report["tables"][table] = meta
    return report


def write_reports() -> None:
    report = collect_report()
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "label_efficiency.json", report)
    atomic_write_text(RESULTS / "label_efficiency.md", markdown(report))
    try:
        plot(report, RESULTS / "label_efficiency.png")
    except Exception as error:  # a plotting problem must not lose the figures
        log(f"plot failed: {error}")


def best_method(results: dict) -> str | None:
    """The method with the highest mean Dice among those run at every seed of the baselines."""
    seeds = len(results.get("supervised", {}).get("seeds", []))
    complete = [m for m, r in results.items() if m not in BASELINES and r["n"] >= seeds and r["gap_closed"] is not None]
    return max(complete, key=lambda m: results[m]["dice"]) if complete else None


def method_label(method: str, result: dict, budget: dict) -> str:
    """The method's name, with its patch where it had to differ from the budget's (ctct)."""
    used = tuple(result.get("patch_used") or ())
    return method if used == tuple(map(int, budget["patch"].split(","))) else f"{method} (patch {'x'.join(map(str, used))})"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def dice_text(r: dict) -> str:
    return f"{r['dice']:.3f}" + (f" ± {r['dice_sd']:.3f}" if r.get("dice_sd") is not None else "")


def per_seed_text(r: dict) -> str:
    return ", ".join(percent(v) for _, v in sorted(r["gap_closed_per_seed"].items())) or "-"


def markdown(report: dict) -> str:
    lines = ["# Label efficiency of the semi-supervised methods", "",
             f"Generated by `bench/label_efficiency.py` ({report['updated']} UTC); the commands are under each "
             "table.",
             "Every method trained through the CLI with the same budget and seeds; `supervised` uses the same",
             "labels as the methods, `fully_supervised` every training case labelled.",
             "Dice: mean ± standard deviation over the seeds. Gap closed = (Dice - Dice supervised) / "
             "(Dice fully supervised - Dice supervised), from the means over the seeds at which the method and "
             "both baselines ran; 'per seed' gives it at each seed alone, against that seed's baselines.",
             "Dice and HD95 (mm): mean over foreground classes and evaluation cases, on the original grids, "
             "no post-processing (no largest-component filter: ACDC's HD95 is dominated by scattered false "
             "positives far from the heart).",
             "Training images are resampled to a coarser spacing (below); `predict` resamples the evaluation "
             "images to it and the probabilities back.", ""]
    lines += ["## Summary (goal: the best method closes at least half of the Dice gap on both sets)", "",
              "| data set | machine | iterations | seeds | supervised | fully supervised | gap | best method "
              "| its Dice | gap closed | per seed | methods run |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for table, entry in report["tables"].items():
        results = entry["results"]
        if any(b not in results for b in BASELINES):
            continue
        best = best_method(results)
        sup, full = results["supervised"], results["fully_supervised"]
        methods = [m for m in results if m not in BASELINES]
        best_text = (f"{method_label(best, results[best], entry['budget'])} | {dice_text(results[best])} | {percent(results[best]['gap_closed'])} | "
                     f"{per_seed_text(results[best])}" if best else "- | - | - | -")  # a baselines-only control
        lines.append(f"| {entry['key'].upper()} | {table.split('/', 1)[1]} | {entry['budget']['iterations']} | "
                     f"{sup['n']} | {dice_text(sup)} | "
                     f"{dice_text(full)} | {full['dice'] - sup['dice']:.3f} | {best_text} | {len(methods)} of "
                     f"{len(entry['planned']) - len(BASELINES)} |")
    lines.append("")
    lines += goal_lines(report)
    for table, entry in report["tables"].items():
        b, key = entry["budget"], entry["key"]
        seeds = sorted({s for r in entry["results"].values() for s in r["seeds"]})
        lines += [f"## {DATASETS[key]['title']}: {table.split('/', 1)[1]}", "",
                  f"Budget: {b['iterations']} iterations, patch {b['patch']}, batch {b['labelled_batch']} labelled + "
                  f"{b['unlabelled_batch']} unlabelled, network {b['network']}, training spacing {entry['spacing']}, "
                  f"{b['optimiser']} lr {b['lr']:g} with poly decay, weight decay 1e-4, {b.get('precision', 'fp32')}, "
                  f"seeds {', '.join(map(str, seeds))}; validation: {b['validation']}"
                  + (f"; method options: {', '.join(b['method_options'])}" if b.get("method_options") else "")
                  + (f"; backbone dropout {b['method_dropout']:g} in every method" if "method_dropout" in b else "")
                  + (f"; unsupervised weight (lambda max) {b['method_consistency']:g} in every method"
                     if "method_consistency" in b else "")
                  + f"; labelled and unlabelled batches {STREAMS_TEXT[entry.get('batch_streams', 'interleaved')]}.", "",
                  f"Machine: {entry.get('machine', '?')}. {entry.get('note', '')}".rstrip(), "",
                  f"Split: labelled {entry['split']['labelled_volumes']} volumes{labelled_by(entry['split'])}, unlabelled "
                  f"{entry['split']['unlabelled_volumes']}; evaluation: {format_eval(entry['split']['eval'])}.", "",
                  "| method | Dice | seeds | HD95 (mm) | gap closed | per seed | "
                  + " | ".join(f"{c} Dice" for c in class_names(key)) + " | s/iter |",
                  "|---|---|---|---|---|---|" + "---|" * len(class_names(key)) + "---|"]
        for method, r in entry["results"].items():
            per_class = " | ".join(f"{v['dice']:.3f}" for v in r["per_class"].values())  # label value order
            label = method_label(method, r, b)
            lines.append(f"| {label} | {dice_text(r)} | {r['n']} | {r['hd95']:.2f} | "
                         f"{'-' if method in BASELINES else percent(r['gap_closed'])} | "
                         f"{'-' if method in BASELINES else per_seed_text(r)} | {per_class} | "
                         f"{r['s_per_iteration']:.2f} |")
        missing = [m for m in entry["planned"] if m not in entry["results"]]
        failed, skipped = entry.get("failed", {}), entry.get("skipped", [])
        if missing:
            lines += ["", "Not run: " + ", ".join(
                m + (f" (failed: {failed[m]})" if m in failed else " (time limit)" if m in skipped else " (pending)")
                for m in missing) + "."]
        lines += ["", f"Wall time of these runs (train + predict, summed over runs that ran side by side): "
                  f"{entry['wall_s'] / 60:.0f} min.", "",
                  "Commands: " + "; then ".join(f"`{c}`" for c in entry["commands"]), ""]
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
    from matplotlib.patches import Patch  # noqa: PLC0415

    tables = [t for t, e in report["tables"].items() if any(m not in BASELINES for m in e["results"])]
    if not tables:
        return
    fig, axes = plt.subplots(len(tables), 2, figsize=(13, 4.2 * len(tables)), squeeze=False)
    for row, table in enumerate(tables):
        results = report["tables"][table]["results"]
        seeds = results.get("supervised", {}).get("n", 0)
        methods = sorted((m for m in results if m not in BASELINES),
                         key=lambda m: -(results[m].get("gap_closed") or -9.0))
        # a method run at fewer seeds than the baselines is paired with those seeds' baselines
        # only: pale and hatched, so its bar is not read against the lines of the mean
        fewer = [results[m].get("n", 1) < seeds for m in methods]
        for col, metric in enumerate(("dice", "hd95")):
            ax = axes[row][col]
            values = [results[m][metric] for m in methods]
            errors = [results[m]["dice_sd"] or float("nan") for m in methods] if metric == "dice" else None
            bars = ax.bar(range(len(methods)), values, yerr=errors, capsize=2,
                          color=["lightsteelblue" if f else "tab:blue" for f in fewer])
            for bar, f in zip(bars, fewer):
                bar.set_hatch("//" if f else None)
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
            ax.set_title(f"{table} (baselines: {seeds} seed{'s' if seeds != 1 else ''}): "
                         + ("mean Dice ± sd (label: gap closed)" if metric == "dice" else "HD95 (mm), lower is better"),
                         fontsize=10)
            if metric == "dice" and values:
                low = min(values + [results.get("supervised", {}).get("dice", 1.0)])
                ax.set_ylim(max(0.0, low - 0.1), 1.0)
            handles = ax.get_legend_handles_labels()[0]
            if any(fewer):
                handles.append(Patch(facecolor="lightsteelblue", hatch="//", label="fewer seeds (gap: paired seeds)"))
            ax.legend(handles=handles, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------
PRESETS = {
    "cpu": {},
    # SSL4MIS's own ACDC budget (docs: ../shared/reference/ssl4mis-recipes.md): 30,000 iterations,
    # 256 x 256 slices at the data's 1.5 mm, batch 12 + 12, SGD lr 0.01 (poly), 7 labelled patients.
    "ssl4mis": {"datasets": "acdc", "methods": "mean_teacher,cps,bcp", "iterations": 30000, "acdc_spacing": 1.5,
                "acdc_patch": "256,256", "acdc_batch": 12, "optimiser": "sgd", "lr": 0.01},
}
"""``--preset``: the CPU preset (the defaults below) or the references' budget; flags given
explicitly override the preset's values."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu (default): the committed tables' budget; ssl4mis: the reference's ACDC budget "
                        "(30,000 iterations, 256x256, batch 12+12, SGD 0.01; about an hour on one GPU)")
    p.add_argument("--datasets", default="acdc,la")
    p.add_argument("--methods", default="all", help="comma-separated; 'all' = every method (baselines always run)")
    p.add_argument("--seeds", default="1337", help="comma-separated; every run at each seed")
    p.add_argument("--extra-seeds", default="", help="comma-separated; after every run at --seeds, the baselines "
                                                      "and the --extra-best methods at these seeds")
    p.add_argument("--extra-best", type=int, default=3,
                   help="how many methods get --extra-seeds: the best by gap closed when a worker frees up")
    p.add_argument("--iterations", type=int, default=3000, help="ACDC iterations (every method)")
    p.add_argument("--la-iterations", type=int, default=2000, help="LA iterations (every method)")
    p.add_argument("--acdc-spacing", type=float, default=3.0, help="in-plane training spacing (mm)")
    p.add_argument("--la-spacing", type=float, default=2.0, help="isotropic training spacing (mm)")
    p.add_argument("--acdc-patch", default="128,128")
    p.add_argument("--acdc-labelled", default="ssl4mis", choices=ACDC_SPLITS,
                   help="which 7 ACDC patients are labelled: SSL4MIS's (default) or the first 7 by number "
                        "(all dilated hearts: the tables before stop 17)")
    p.add_argument("--la-patch", default="32,48,48")
    p.add_argument("--acdc-batch", type=int, default=4, help="labelled and unlabelled batch, 2D")
    p.add_argument("--la-batch", type=int, default=2, help="labelled and unlabelled batch, 3D")
    p.add_argument("--size", default="small", choices=("tiny", "small", "base"))
    p.add_argument("--optimiser", default="adamw", choices=("sgd", "adamw"),
                   help="adamw (default): SSL4MIS's SGD 0.01 is far from converged in a CPU budget")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every method's training (not the baselines'); runs go to their own budget folder")
    p.add_argument("--dropout", type=float, default=None,
                   help="backbone dropout for every method (not the baselines; default: each method's own); "
                        "runs go to their own budget folder")
    p.add_argument("--consistency", type=float, default=None,
                   help="the unsupervised loss's maximum weight for every method (not the baselines; default: "
                        "each method's own; 0 isolates what a method's network and supervised loss do without "
                        "its unlabelled term); runs go to their own budget folder")
    p.add_argument("--val-cases", type=int, default=0,
                   help="labelled cases held out for validation in every run, the best checkpoint kept (default 0: "
                        "all train, the last weights are evaluated); runs go to their own budget folder")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default: fp32, as on the CPU)")
    p.add_argument("--num-workers", type=int, help="batch-preparing processes per run (default: the engine's)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side")
    p.add_argument("--data", type=Path, default=DATA, help="folder laid out like ../shared/data")
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="run folders (a trial elsewhere leaves the tables alone)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the md/json/png go")
    p.add_argument("--tag", default="", help="a side table's name (e.g. a control run at another patch), reported "
                                             "beside the data set's main table instead of replacing it")
    p.add_argument("--note", default="", help="what else ran on the machine (goes into the report)")
    p.add_argument("--deadline", default=None, type=deadline_after_now,
                   help="UTC HH:MM, its next occurrence (01:25 given at 23:00 is in 2 h 25 min): start no run after it")
    p.add_argument("--time-limit", type=float, default=None, help="seconds: start no run after them")
    p.add_argument("--resume", action="store_true",
                   help="skip runs whose results exist; go on with a run killed mid-training from its last checkpoint")
    p.add_argument("--report-only", action="store_true", help="only rewrite the md/json/png from the runs on disk")
    add_batch_streams_option(p)
    preset, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[preset.preset])
    args = p.parse_args(argv)
    check_batch_streams(p, args)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.extra_seed_list = [int(s) for s in args.extra_seeds.split(",") if s.strip()]
    args.data = args.data.resolve()
    return args


def deadline_after_now(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """``--deadline HH:MM`` (UTC) as the next such moment: a chain started before midnight with
    an 01:25 deadline runs until 01:25, where comparing clock times would stop it at once."""
    try:
        hour, minute = map(int, text.split(":"))
        now = now or datetime.datetime.now(datetime.timezone.utc)
        moment = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTC time HH:MM ({error})") from error
    return moment if moment > now else moment + datetime.timedelta(days=1)


def out_of_time(args, started: float) -> bool:
    if args.time_limit is not None and time.monotonic() - started > args.time_limit:
        return True
    return bool(args.deadline) and datetime.datetime.now(datetime.timezone.utc) >= args.deadline


def gap_so_far() -> dict[str, float]:
    """``{method: mean over the tables of its gap closed}`` from the runs finished so far."""
    gaps: dict[str, list[float]] = {}
    for entry in collect_report()["tables"].values():
        for method, result in entry["results"].items():
            if method not in BASELINES and result["gap_closed"] is not None:
                gaps.setdefault(method, []).append(result["gap_closed"])
    return {m: statistics.fmean(g) for m, g in gaps.items()}


def start_table(key: str, methods: list[str], prepared: dict, args, command: str) -> Path:
    """The budget folder's meta.json, merged with an earlier one of the same budget (e.g. a
    --resume of one method, or another seed)."""
    root = runs_root(key, args)
    tag = table_tag(key, args)
    table = f"{key}/{args.device}" + (f"/{tag}" if tag else "")
    reported = load_tables().get(table)
    if reported not in (None, root.name):
        # without this, a variant run (--consistency, --method-option) silently took over the
        # method table's name, and the report showed the variant as the methods' defaults
        raise SystemExit(f"table {table} reports the runs in {reported}, but these settings train into "
                         f"{root.name}: give --tag NAME to report them in a table of their own")
    root.mkdir(parents=True, exist_ok=True)
    meta = {"title": DATASETS[key]["title"], "budget": budget_of(args, key), "spacing": prepared["spacing"],
            "split": prepared["split"], "planned": [*BASELINES, *methods], "commands": [command],
            "machine": describe_machine(args.device), "note": args.note, "failed": {}, "skipped": [],
            "batch_streams": args.batch_streams, "folder": root.name}
    if (root / "meta.json").exists():
        earlier = json.loads((root / "meta.json").read_text())
        meta["planned"] = merged_planned(earlier["planned"], meta["planned"])
        meta["commands"] = [*earlier.get("commands", []), command]
        meta["note"] = earlier.get("note") or args.note
    atomic_write_json(root / "meta.json", meta)
    register_table(table, root.name)
    return root


def selected_methods(text: str) -> list[str]:
    """``--methods``: "all" or comma-separated names, in :data:`METHODS` order; an unknown name
    is an error, not a run left out."""
    if text == "all":
        return list(METHODS)
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    return [m for m in METHODS if m in asked]


def main(argv=None) -> int:
    global SCRATCH, RESULTS  # noqa: PLW0603  (one bench per process; every helper reads them)
    args = parse_args(argv)
    SCRATCH, RESULTS = args.scratch.resolve(), args.results.resolve()
    if args.report_only:
        write_reports()
        return 0
    methods = selected_methods(args.methods)
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    command = ("env OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?")
               + " .venv/bin/python bench/label_efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv))
    started, lock = time.monotonic(), threading.Lock()
    metas, prepared_sets = {}, {}
    for key in keys:
        log(f"preparing {key}")
        prepared_sets[key] = (prepare_acdc if key == "acdc" else prepare_la)(args)
        metas[key] = start_table(key, methods, prepared_sets[key], args, command) / "meta.json"
    queue = RunQueue(keys, BASELINES, methods, args.seed_list, args.extra_seed_list, args.extra_best, gap_so_far)

    def update_meta(key: str, change) -> None:
        """Apply ``change`` to the budget folder's meta.json (shared by the runs side by side)."""
        with lock:
            meta = json.loads(metas[key].read_text())
            change(meta)
            atomic_write_json(metas[key], meta)

    def skipped(meta: dict, method: str) -> None:
        if method not in meta["skipped"]:
            meta["skipped"].append(method)

    def one(task) -> None:
        key, method, seed = task
        prepared = prepared_sets[key]
        if out_of_time(args, started):
            log(f"time limit: {key}/{method} seed {seed} not started")
            update_meta(key, lambda meta: skipped(meta, method))
        else:
            train_one(key, method, seed, prepared)
        with lock:  # a skipped run changes the report too ("not run: time limit")
            write_reports()

    def train_one(key: str, method: str, seed: int, prepared: dict) -> None:
        log(f"{key}/{method} seed {seed}: training")
        try:
            r = run_method(key, method, seed, prepared, args)
        except Exception as error:  # one failing method must not stop the table
            log(f"{key}/{method} seed {seed} FAILED: {error}")
            failure = {method: f"seed {seed}: {error}"}
            update_meta(key, lambda meta: meta["failed"].update(failure))
        else:
            log(f"{key}/{method} seed {seed}: Dice {r['dice']:.3f} HD95 {r['hd95']:.2f} mm "
                f"train {r['train_s']:.0f} s ({r['s_per_iteration']:.2f} s/it)")

    def worker() -> None:
        while (task := queue.next()) is not None:
            one(task)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in as_completed([pool.submit(worker) for _ in range(max(1, args.jobs))]):
            future.result()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
