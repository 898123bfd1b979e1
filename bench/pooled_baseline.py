"""Every run of each method against a supervised-only baseline pooled from many runs.

At the bench's CPU preset one supervised-only run is a single draw from a wide spread: a
float-level change to the loss (Mean Teacher with no dropout and a consistency weight of
1e-4, which at weight 0 trains the supervised-only weights bit for bit) moved ACDC's Dice at
seed 1337 from 0.700 to 0.636. A method's gap closed against one such run says as much about
the baseline's luck as about the method. This pools instead: every run of a method in the
given runs folders (any seed, any batch stream), against the mean of every
supervised-equivalent run (the folders' supervised-only runs plus control runs that are
supervised-only training up to float-level perturbations), with a rough standard error.

    python bench/pooled_baseline.py --scratch /root/sslbench \\
        --folders acdc_3mm_3000it_p128x128_b4_adamw0.001_ssl4mis-split,acdc_3mm_3000it_p128x128_b4_adamw0.001_paired_ssl4mis-split \\
        --controls 'controls18/mt_consistency0_dropout0_seed1337,controls19/mt_consistency0.000*_dropout0_seed1337'

``--controls-from bench/results/pooled_baseline.json`` counts the control runs of that
earlier report, whose folders stayed on the machine that ran them (the runs folders
themselves come back with ``restore_runs.py``).

Writes ``pooled_baseline.{md,json}`` to ``--results``. Trains nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import goals  # noqa: E402
from label_efficiency import BASELINES, BATCH_STREAMS, RESULTS, SCRATCH, streams_suffix  # noqa: E402

from SSLSegmentLib.fileio import atomic_write_json, atomic_write_text  # noqa: E402


def runs_of(folders: list[Path], method: str) -> list[tuple[str, float]]:
    """``[(label, Dice)]`` of every finished run of ``method`` in ``folders``."""
    return [(f"{result.parts[-2]}, {stream_of(folder)}", json.loads(result.read_text())["dice"])
            for folder in folders for result in sorted(folder.glob(f"{method}/seed*/bench_result.json"))]


def stream_of(folder: Path) -> str:
    return "paired streams" if streams_suffix(BATCH_STREAMS) in folder.name else "one generator"


def controls_of(scratch: Path, patterns: list[str]) -> list[tuple[str, float]]:
    """``[(label, Dice)]`` of the finished control runs: folders with ``sslsegment evaluate``'s
    ``eval.json`` (labelled by the folder's name) or label-efficiency runs with a
    ``bench_result.json`` (``runs/<budget>/<method>/seed<n>``, labelled ``<budget>/<method>/seed<n>``
    so that a control never passes for the supervised-only run of its seed)."""
    found = sorted({p for pattern in patterns for p in scratch.glob(pattern)
                    if (p / "eval.json").exists() or (p / "bench_result.json").exists()})
    return [control_run(p) for p in found]


def control_run(folder: Path) -> tuple[str, float]:
    if (folder / "eval.json").exists():
        return folder.name, json.loads((folder / "eval.json").read_text())["mean"]["all"]["dice"]
    return "/".join(folder.parts[-3:]), json.loads((folder / "bench_result.json").read_text())["dice"]


def controls_from(report: Path) -> list[tuple[str, float]]:
    """The control runs of an earlier ``pooled_baseline.json`` (its baseline runs that are not a
    folder's supervised-only run), for a machine that no longer has their folders."""
    runs = json.loads(report.read_text())["baseline"]["runs"]
    return [(label, dice) for label, dice in runs if not label.startswith("seed")]


def standard_error(method_dice: list[float], baseline_sd: float, baseline_runs: int) -> float:
    """Of a method's mean minus the baseline's mean: the method's own run-to-run sd where it
    has two runs or more, the baseline's where it has one. Runs that share a seed are not
    independent, so this is rough."""
    method_sd = statistics.stdev(method_dice) if len(method_dice) > 1 else baseline_sd
    return (method_sd ** 2 / len(method_dice) + baseline_sd ** 2 / baseline_runs) ** 0.5


def spread_by_seed(runs: list[tuple[str, float]]) -> dict:
    """The supervised-equivalent runs grouped by the seed their label names: ``{"seeds": {seed:
    [Dice, ...]}, "within_sd": ...}``, where ``within_sd`` pools the spread inside each seed
    with two runs or more (float-level changes at one seed) for comparison with the spread over
    every run: when they are alike, a seed's runs are no closer to each other than any two
    runs, and one run per seed says little about a method at that seed."""
    seeds: dict[int, list[float]] = {}
    for label, dice in runs:
        found = re.search(r"seed(\d+)", label)
        if found:
            seeds.setdefault(int(found.group(1)), []).append(dice)
    repeated = [d for d in seeds.values() if len(d) > 1]
    within = None
    if repeated:
        squares = sum(statistics.variance(d) * (len(d) - 1) for d in repeated)
        within = (squares / sum(len(d) - 1 for d in repeated)) ** 0.5
    return {"seeds": dict(sorted(seeds.items())), "within_sd": within}


def pooled(folders: list[Path], controls: list[tuple[str, float]],
           method_folders: dict[str, list[Path]] | None = None) -> dict:
    """``method_folders``: for a method whose default moved (a departure adopted after its runs
    in ``folders``), the folders of its runs at the new default, which replace those."""
    method_folders = method_folders or {}
    baseline = runs_of(folders, "supervised") + controls
    # the same run copied into several folders counts once (keyed by seed)
    full = {label.split(",")[0]: dice for label, dice in runs_of(folders, "fully_supervised")}
    if len(baseline) < 2 or not full:
        raise SystemExit("need two supervised-equivalent runs or more and a fully supervised run")
    baseline = list({(label.split(",")[0], dice): (label, dice) for label, dice in baseline}.values())
    base_dice = [d for _, d in baseline]
    base_mean, base_sd = statistics.fmean(base_dice), statistics.stdev(base_dice)
    full_mean = statistics.fmean(full.values())
    gap = full_mean - base_mean
    methods = {}
    names = sorted({p.parts[-3] for f in folders for p in f.glob("*/seed*/bench_result.json")}
                   - set(BASELINES) | set(method_folders))
    for method in names:
        runs = runs_of(method_folders.get(method, folders), method)
        dice = [d for _, d in runs]
        error = standard_error(dice, base_sd, len(baseline))
        methods[method] = {"runs": runs, "mean": statistics.fmean(dice),
                           "sd": statistics.stdev(dice) if len(dice) > 1 else None,
                           "gap_closed": (statistics.fmean(dice) - base_mean) / gap, "gap_closed_error": error / gap}
    return {"baseline": {"runs": baseline, "mean": base_mean, "sd": base_sd, "by_seed": spread_by_seed(baseline)},
            "fully_supervised": {"runs": sorted(full.items()), "mean": full_mean}, "gap": gap,
            "methods": dict(sorted(methods.items(), key=lambda kv: -kv[1]["mean"])),
            "goals": goals.check_with_errors({m: (r["gap_closed"], r["gap_closed_error"]) for m, r in methods.items()})}


def markdown(report: dict) -> str:
    base, full = report["baseline"], report["fully_supervised"]
    lines = [f"Supervised-only, {len(base['runs'])} supervised-equivalent runs: **{base['mean']:.3f} ± {base['sd']:.3f}** "
             f"({', '.join(f'{d:.3f}' for _, d in base['runs'])}); fully supervised {full['mean']:.3f} "
             f"({len(full['runs'])} runs); gap {report['gap']:.3f}.", "", *seed_lines(base["by_seed"]),
             "| method | runs | Dice (mean ± sd) | gap closed against the pooled baseline (± 1 standard error) "
             "| runs (seed, batch streams) |", "|---|---|---|---|---|"]
    for method, r in report["methods"].items():
        sd = f" ± {r['sd']:.3f}" if r["sd"] is not None else ""
        lines.append(f"| {method} | {len(r['runs'])} | {r['mean']:.3f}{sd} | {100 * r['gap_closed']:.0f} % "
                     f"(± {100 * r['gap_closed_error']:.0f} %) | "
                     + ", ".join(f"{d:.3f} ({label})" for label, d in r["runs"]) + " |")
    return "\n".join(lines + ["", *goal_lines(report)]) + "\n"


def seed_lines(by_seed: dict) -> list[str]:
    """The baseline's runs seed by seed, and its spread within a seed against the spread over all."""
    if by_seed["within_sd"] is None:
        return []
    seeds = "; ".join(f"{seed}: {', '.join(f'{d:.3f}' for d in dice)}" for seed, dice in by_seed["seeds"].items())
    return [f"By seed ({seeds}): the sd within a seed is {by_seed['within_sd']:.3f}, pooled over the seeds "
            "with two runs or more, against the sd over every run above.", ""]


def goal_lines(report: dict) -> list[str]:
    """Issue 14's goals judged on the pooled estimates with their error bars."""
    verdicts = report["goals"]
    return ["Issue 14's goals on these estimates (\"shown\": true for every value within one standard error; "
            "\"failed\": false for every such value):", "",
            f"- no method below supervised-only by more than 5 % of the gap: **{verdicts['none_below']}** "
            f"(clearly below: {', '.join(verdicts['clearly_below']) or 'none'});",
            f"- at least four methods closing 25 % or more: **{verdicts['four_good']}** "
            f"(clearly at 25 % or more: {', '.join(verdicts['clearly_good']) or 'none'});",
            f"- the best closing 65 % or more: **{verdicts['best_65']}**."]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="label_efficiency.py's --scratch")
    p.add_argument("--folders", required=True, help="comma-separated runs folders (names under SCRATCH/runs)")
    p.add_argument("--controls", default="", help="comma-separated globs under SCRATCH: supervised-equivalent "
                                                   "control runs, each with an eval.json or a bench_result.json")
    p.add_argument("--controls-from", type=Path, help="an earlier pooled_baseline.json whose control runs count too "
                                                     "(their folders stayed on another machine)")
    p.add_argument("--method-folders", action="append", default=[], metavar="METHOD=FOLDER[+FOLDER]",
                   help="a method whose default moved: its runs come from these folders (at the new default) "
                        "instead of --folders")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    folders = [args.scratch / "runs" / name for name in args.folders.split(",") if name]
    method_folders = {}
    for spec in args.method_folders:
        method, _, names = spec.partition("=")
        if not names:
            raise SystemExit(f"--method-folders needs METHOD=FOLDER, not {spec!r}")
        method_folders[method] = [args.scratch / "runs" / name for name in names.split("+")]
    missing = [str(f) for f in folders + [f for fs in method_folders.values() for f in fs] if not f.is_dir()]
    if missing:
        raise SystemExit(f"no such runs folder: {', '.join(missing)}")
    controls = controls_of(args.scratch, [g for g in args.controls.split(",") if g])
    earlier = controls_from(args.controls_from) if args.controls_from else []
    known = {label for label, _ in controls}
    report = pooled(folders, controls + [(label, dice) for label, dice in earlier if label not in known],
                    method_folders)
    report["command"] = "python bench/pooled_baseline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "pooled_baseline.json", report)
    atomic_write_text(args.results / "pooled_baseline.md", "# Pooled baseline\n\n" + markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
