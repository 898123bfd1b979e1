"""Dice against training minutes: what "Train for N minutes" gives on this machine (issue 14).

The product path, not the label-efficiency bench's: every run is ``sslsegment train`` with the
defaults a clinician gets (the fast-cpu preset on a CPU: spacing "fit", bf16 where the CPU has
it, no hold-out below 20 labelled cases) and ``--time-budget MINUTES``, on the original images,
for supervised-only and the default method (``config.DEFAULT_METHOD``). Then ``predict`` on the
evaluation cases and ``evaluate``. The splits are those of ``label_efficiency.py``:

- ACDC 2D: 7 patients labelled (14 volumes), 126 volumes unlabelled; ACDC/val. Which 7:
  ``--acdc-labelled``, SSL4MIS's seven by default since stop 17, or ``first``, the first 7 by
  number (all dilated hearts), the split of the committed curves of stops 14 to 16;
- LA 3D: 8 of the first 64 cases labelled, 56 unlabelled; the last 16 cases evaluated.

The budget covers reading and preprocessing the cases and training; the prediction of the
evaluation cases is timed apart (``predict_s``). Each row also gives the iterations the budget
chose and the wall time the training took, so that an overrun shows.

    nice -n 5 .venv/bin/python bench/time_budget.py --minutes 2,5,10,20 --threads 2

Runs resume (a finished run is kept); the md/json are rewritten after every run.
``--report-only`` writes them from the finished runs of the grid asked for, training nothing
(runs of several invocations, each over part of the grid, in one report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import (  # noqa: E402
    ACDC_SPLIT_TEXT, ACDC_SPLITS, BATCH_STREAMS, DATA, DATASETS, ROOT, STREAMS_TEXT, acdc_labelled_patients,
    add_batch_streams_option, check_batch_streams, cli, link_folder, log, nrrd_names, split_suffix, streams_suffix,
    utc_now, write_dataset_json)

from SSLSegmentLib.config import DEFAULT_METHOD  # noqa: E402
from SSLSegmentLib.fileio import atomic_write_json, atomic_write_text  # noqa: E402

SCRATCH = ROOT / "bench" / "runs" / "time_budget"
RESULTS = ROOT / "bench" / "results"


def prepare(key: str, data: Path, scratch: Path, acdc_labelled: str = "ssl4mis") -> dict:
    """dataset.json over the original files (no resampling: the product's spacing rule decides)."""
    if key == "acdc":
        root = data / "ACDC"
        names = nrrd_names(root / "train" / "images")
        labelled = acdc_labelled_patients(sorted({n.split("_")[0] for n in names}), acdc_labelled)
        few = [(root / "train" / "images" / n, root / "train" / "labels" / n) for n in names if n.split("_")[0] in labelled]
        rest = [root / "train" / "images" / n for n in names if n.split("_")[0] not in labelled]
        eval_images, eval_labels = root / "val" / "images", root / "val" / "labels"
    else:
        root = data / "LA" / "train"
        names = nrrd_names(root / "images")
        train, held_out = names[:-16], names[-16:]
        few = [(root / "images" / n, root / "labels" / n) for n in train[:8]]
        rest = [root / "images" / n for n in train[8:]]
        eval_images = link_folder(scratch / "la_eval16" / "images", [root / "images" / n for n in held_out])
        eval_labels = link_folder(scratch / "la_eval16" / "labels", [root / "labels" / n for n in held_out])
    name = key + split_suffix(key, acdc_labelled)  # ACDC's SSL4MIS split apart from the first 7
    dataset = write_dataset_json(scratch / f"{name}_original.json", DATASETS[key]["classes"], few, rest)
    return {"dataset": dataset, "eval_images": eval_images, "eval_labels": eval_labels,
            "labelled": len(few), "unlabelled": len(rest)}


def run_folder(scratch: Path, key: str, method: str, minutes: float, seed: int,
               acdc_labelled: str = "ssl4mis", batch_streams: str = BATCH_STREAMS) -> Path:
    return (scratch / "runs" / (key + split_suffix(key, acdc_labelled) + streams_suffix(batch_streams))
            / f"{method}_{minutes:g}min" / f"seed{seed}")


def run_one(key: str, method: str, minutes: float, seed: int, prepared: dict, args) -> dict:
    run = run_folder(args.scratch, key, method, minutes, seed, args.acdc_labelled, args.batch_streams)
    result_file = run / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    train = run / "train"
    log_file = run / "bench.log"
    run.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cli("train", "--dataset", str(prepared["dataset"]), "--method", method, "--time-budget", f"{minutes:g}",
        "--seed", str(seed), "--threads", str(args.threads), "--device", "cpu",
        "--cache-dir", str(args.scratch / ".sslsegment-cache"), "--out", str(train), "--overwrite", log_file=log_file)
    train_s = time.monotonic() - started
    predict_s = cli("predict", "--model", str(train), "--images", str(prepared["eval_images"]), "--out",
                    str(run / "pred"), "--overwrite", log_file=log_file)
    cli("evaluate", "--pred", str(run / "pred"), "--labels", str(prepared["eval_labels"]),
        "--json", str(run / "eval.json"), log_file=log_file)
    mean = json.loads((run / "eval.json").read_text())["mean"]
    plan = json.loads((train / "budget.json").read_text())
    saved = json.loads((train / "config.json").read_text())
    result = {"dataset": key, "method": method, "minutes": minutes, "seed": seed, "dice": mean["all"]["dice"],
              "hd95": mean["all"]["hd95"], "iterations": plan["iterations"], "train_s": round(train_s, 1),
              "predict_s": round(predict_s, 1), "plan": plan, "patch": saved["patch_size"],
              "spacing": saved["plan"]["target_spacing"], "precision": saved["config"]["precision"],
              "threads": args.threads, "load_1min": round(os.getloadavg()[0], 2), "finished": utc_now()}
    atomic_write_json(result_file, result)
    return result


def report(results: list[dict], args) -> None:
    lines = ["# Dice against training minutes (`--time-budget`), product defaults", "",
             f"Generated by `bench/time_budget.py` ({utc_now()} UTC). Every run: `sslsegment train --dataset D "
             f"--method M --time-budget MIN --threads {args.threads} --seed S` with the product's CPU defaults "
             "(fast-cpu preset: spacing 'fit', bf16 where the CPU has it, every label trains), on the original "
             "images; then `predict` and `evaluate` on the evaluation cases (Dice on the original grids).",
             "'train s' is the wall time of the whole `train` command (start-up included) against the budget; "
             "'load' the machine's 1-minute load average when the run ended (2 cores).", ""]
    if args.note:
        lines += [args.note, ""]
    for key in ("acdc", "la"):
        rows = sorted((r for r in results if r["dataset"] == key), key=lambda r: (r["minutes"], r["method"]))
        if not rows:
            continue
        first = rows[0]
        split = f" Labelled patients: {ACDC_SPLIT_TEXT[args.acdc_labelled]} (`--acdc-labelled`)." if key == "acdc" else ""
        lines += [f"## {DATASETS[key]['title']}", "",
                  f"Patch {first['patch']}, training spacing {first['spacing']}, precision {first['precision']}."
                  f"{split} Labelled and unlabelled batches {STREAMS_TEXT[args.batch_streams]}.", "",
                  "| minutes | method | Dice | HD95 (mm) | iterations | s/iter (plan) | train s | predict s | load |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['minutes']:g} | {r['method']} | {r['dice']:.3f} | {r['hd95']:.1f} | {r['iterations']} | "
                  f"{r['plan'].get('seconds_per_iteration', float('nan')):.3f} | {r['train_s']:.0f} | "
                  f"{r['predict_s']:.0f} | {r['load_1min']} |" for r in rows]
        lines.append("")
    atomic_write_text(args.results / "time_budget.md", "\n".join(lines))
    atomic_write_json(args.results / "time_budget.json", {"updated": utc_now(), "runs": results})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="acdc,la")
    p.add_argument("--minutes", default="2,5,10,20", help="comma-separated budgets")
    p.add_argument("--la-minutes", default=None, help="LA's budgets (default: --minutes)")
    p.add_argument("--methods", default=f"supervised,{DEFAULT_METHOD}")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--acdc-labelled", default="ssl4mis", choices=ACDC_SPLITS,
                   help="which 7 ACDC patients are labelled (see label_efficiency.py)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--scratch", type=Path, default=SCRATCH)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--report-only", action="store_true", help="report the finished runs of the grid; train nothing")
    add_batch_streams_option(p)
    args = p.parse_args(argv)
    check_batch_streams(p, args)
    args.scratch, args.results = args.scratch.resolve(), args.results.resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    keys = args.datasets.split(",")
    budgets = {k: [float(m) for m in ((args.la_minutes if k == "la" and args.la_minutes else args.minutes).split(","))]
               for k in keys}
    if args.report_only:
        found = [run_folder(args.scratch, k, method, m, args.seed, args.acdc_labelled, args.batch_streams)
                 / "result.json"
                 for k in keys for m in budgets[k] for method in args.methods.split(",")]
        report([json.loads(f.read_text()) for f in found if f.exists()], args)
        return 0
    prepared = {k: prepare(k, args.data, args.scratch, args.acdc_labelled) for k in keys}
    # Shortest budgets first over every data set, so a cut-off session still has whole curves' starts.
    tasks = sorted(((m, k, method) for k in keys for m in budgets[k] for method in args.methods.split(",")),
                   key=lambda t: (t[0], keys.index(t[1])))
    results = []
    for minutes, key, method in tasks:
        log(f"{key}/{method} {minutes:g} min: training")
        try:
            r = run_one(key, method, minutes, args.seed, prepared[key], args)
        except RuntimeError as error:
            log(f"{key}/{method} {minutes:g} min: FAILED ({error})")
            continue
        results.append(r)
        log(f"{key}/{method} {minutes:g} min: Dice {r['dice']:.3f}, {r['iterations']} iterations, "
            f"train {r['train_s']:.0f} s")
        report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
