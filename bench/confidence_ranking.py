"""Does "least confident first" find the worst predictions? Measured on the bench's own runs.

A clinician corrects the worst predictions first, and finds them by the confidence that
prediction writes for each case (``confidence.json``: the mean over the foreground of the
highest softmax probability, see ``SSLSegmentLib.inference``). This reads every finished run
of ``bench/label_efficiency.py`` (its ``eval.json`` has each case's Dice against the truth)
and reports, per runs folder (one table of that bench):

- the Spearman correlation between a case's confidence and its Dice (1: the same order);
- of the ``k`` cases with the lowest Dice, how many are among the ``k`` least confident
  (chance: k * k / cases).

The confidence ranked is the network's own. Where the training-domain check set a case's
confidence to 0 (``out_of_domain.json`` keeps the value before), the value before is used and
the run is counted as "out of domain": the LA bench trains on 2 mm copies but predicts the
0.625 mm originals, a spacing factor of 3.2 that the check flags, so the product's ordering
there would be by name, not by confidence. No training and no network: it reads files.

    .venv/bin/python bench/confidence_ranking.py [--scratch /root/sslbench] [--k 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_efficiency import RESULTS, SCRATCH  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``, ties at their mean rank); NaN
    when either list has one value only."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def case_dice(entry: dict) -> float:
    """A case's Dice: the mean over its classes (``eval.json`` has one entry per label)."""
    return statistics.fmean(v["dice"] for k, v in entry.items() if k.startswith("label_"))


def run_ranking(run: Path, k: int) -> dict | None:
    """The ranking figures of one finished run, or None when it lacks predictions or Dice."""
    confidence_file, eval_file = run / "pred" / "confidence.json", run / "eval.json"
    if not (confidence_file.exists() and eval_file.exists()):
        return None
    confidence = json.loads(confidence_file.read_text())
    flagged_file = run / "pred" / "out_of_domain.json"
    flagged = json.loads(flagged_file.read_text()) if flagged_file.exists() else {}
    confidence.update({name: entry["confidence_before"] for name, entry in flagged.items()})
    dice = {name: case_dice(entry) for name, entry in json.loads(eval_file.read_text())["cases"].items()}
    names = sorted(set(dice) & set(confidence))
    if len(names) < 2:
        return None
    k = min(k, len(names))
    worst = set(sorted(names, key=dice.get)[:k])
    least_confident = set(sorted(names, key=confidence.get)[:k])
    return {"cases": len(names), "spearman": spearman([confidence[n] for n in names], [dice[n] for n in names]),
            "worst_caught": len(worst & least_confident), "k": k, "out_of_domain": len(flagged)}


def folder_summary(folder: Path, k: int) -> dict | None:
    """Every finished run under ``folder/<method>/seed<N>`` and their median and mean figures."""
    runs = {f"{run.parent.name}/{run.name}": r for run in sorted(folder.glob("*/seed*"))
            if (r := run_ranking(run, k)) is not None}
    if not runs:
        return None
    rhos = [r["spearman"] for r in runs.values() if r["spearman"] == r["spearman"]]
    cases = statistics.median(r["cases"] for r in runs.values())
    return {"runs": runs, "median_spearman": statistics.median(rhos) if rhos else None,
            "mean_worst_caught": statistics.fmean(r["worst_caught"] for r in runs.values()),
            "chance_worst_caught": min(k, cases) ** 2 / cases, "k": k,
            "runs_out_of_domain": sum(r["out_of_domain"] > 0 for r in runs.values())}


def markdown(report: dict) -> str:
    lines = ["# Confidence against Dice: does least confident first find the worst cases?", "",
             f"`{report['command']}`: every finished run of `bench/label_efficiency.py`; the network's own "
             "confidence (before the training-domain check's 0).", "",
             "| runs folder | runs | median Spearman (confidence, Dice) | worst k among the k least confident "
             "| chance | runs with cases out of domain |", "|---|---|---|---|---|---|"]
    for name, s in report["folders"].items():
        rho = "n/a" if s["median_spearman"] is None else f"{s['median_spearman']:.2f}"
        lines.append(f"| {name} | {len(s['runs'])} | {rho} | {s['mean_worst_caught']:.1f} of {s['k']} "
                     f"| {s['chance_worst_caught']:.1f} | {s['runs_out_of_domain']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="the label-efficiency bench's scratch folder")
    p.add_argument("--k", type=int, default=5, help="how many worst cases to look for")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    folders = {f.name: s for f in sorted((args.scratch / "runs").iterdir()) if f.is_dir()
               and (s := folder_summary(f, args.k)) is not None}
    given = sys.argv[1:] if argv is None else argv
    report = {"command": " ".join(["python bench/confidence_ranking.py", *given]), "folders": folders}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "confidence_ranking.json").write_text(json.dumps(report, indent=1))
    (args.results / "confidence_ranking.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
