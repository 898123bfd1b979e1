"""Write what each method gained on the bench into the product (``SSLSegmentLib/measured_gain.py``).

The panel, the web UI and ``sslsegment methods`` show, beside each method, the share of the
gap between supervised-only and fully supervised training it closed on the label-efficiency
bench, and say where it ended below supervised-only, so that a clinician who picks another
method than the default knows what the measurements say. The figures come from the committed
reports, never from a hand-copied table:

- ACDC (2D): the pooled view of ``bench/results/pooled_baseline.json`` (every run of a method
  against the mean of every supervised-only run, with a rough standard error);
- LA (3D): the runs of the label-efficiency tables named by ``--la-tables``, one per seed
  (where two tables ran a method at the same seed, the first named gives it), each against its
  own table's baselines at that seed: the figure is the mean of these per-seed gaps, the
  error their standard error, where there are several. The tables differ in their batch
  streams only, which supervised-only training does not draw (its runs agree), as the pooled
  ACDC view pools both.

    python bench/method_evidence.py            # rewrites SSLSegmentLib/measured_gain.py
    python bench/method_evidence.py --check    # exit 1 when the module is stale

Trains nothing. ``Testing/test_method_evidence.py`` fails when the committed module no longer
matches the committed reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODULE = ROOT / "SSLSegmentLib" / "measured_gain.py"
POOLED = RESULTS / "pooled_baseline.json"
TABLES = RESULTS / "label_efficiency_after_reference_settings.json"
LA_TABLES = ("la/cpu", "la/cpu/paired-streams")
LA_MOVED = {"adversarial": ("la/cpu/paired-streams/dan-map-only-weight0.01",)}
"""Methods whose default moved after their runs in ``LA_TABLES``: their LA figure comes from
these tables (runs at the new default) alone, or is left out where they hold none. The ACDC
view does the same through ``pooled_baseline.py --method-folders``."""
sys.path.insert(0, str(Path(__file__).resolve().parent))
from goals import BASELINES, WORST_ALLOWED  # noqa: E402
SETTING = "cardiac MRI at the CPU preset, ACDC 2D with 7 of 70 patients labelled and LA 3D with 8 of 64"

Figure = tuple[int, "int | None", int]
"""(percent of the gap closed, its rough standard error in percent or None, runs)."""


def acdc_figures(pooled: dict) -> dict[str, Figure]:
    """The pooled ACDC view: ``{method: (gap %, error %, runs)}``."""
    return {method: (round(100 * r["gap_closed"]), round(100 * r["gap_closed_error"]), len(r["runs"]))
            for method, r in pooled["methods"].items()}


def per_seed_gaps(tables: dict, names) -> dict[str, dict[str, float]]:
    """``{method: {seed: gap closed}}`` over the tables ``names`` (the first named wins a seed);
    a table result without per-seed gaps counts once, under the seed ``"?"``."""
    gaps: dict[str, dict[str, float]] = {}
    for name in names:
        for method, r in tables.get(name, {}).get("results", {}).items():
            if method in BASELINES or r.get("gap_closed") is None:
                continue
            per_seed = r.get("gap_closed_per_seed") or {"?": r["gap_closed"]}
            for seed, gap in per_seed.items():
                if gap is not None:
                    gaps.setdefault(method, {}).setdefault(seed, gap)
    return gaps


def mean_figure(gaps: list[float]) -> Figure:
    """The mean gap closed in percent, its standard error where there are several, the runs."""
    error = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else None
    return round(100 * statistics.fmean(gaps)), None if error is None else round(100 * error), len(gaps)


def evidence(pooled: dict, tables: dict, la_tables=LA_TABLES, la_moved=None) -> dict[str, dict[str, Figure]]:
    """``{method: {"ACDC": figure, "LA": figure}}`` from the reports (a set missing where the
    method did not run on it at its current default: ``la_moved``, default :data:`LA_MOVED`)."""
    la_moved = LA_MOVED if la_moved is None else la_moved
    figures: dict[str, dict[str, Figure]] = {}
    for method, figure in acdc_figures(pooled).items():
        figures.setdefault(method, {})["ACDC"] = figure
    la_gaps = {m: g for m, g in per_seed_gaps(tables, la_tables).items() if m not in la_moved}
    for method, names in la_moved.items():
        la_gaps.update({m: g for m, g in per_seed_gaps(tables, names).items() if m == method})
    for method, gaps in la_gaps.items():
        figures.setdefault(method, {})["LA"] = mean_figure(list(gaps.values()))
    return {m: dict(sorted(figures[m].items())) for m in sorted(figures)}


def clearly_below(figures: dict[str, dict[str, Figure]]) -> dict[str, list[str]]:
    """``{method: [sets]}`` where it ended below supervised-only by more than the bench's seed
    noise (``goals.WORST_ALLOWED``), beyond its error where it has one."""
    below = {m: [name for name, (gap, error, _) in sets.items() if gap + (error or 0) < 100 * WORST_ALLOWED]
             for m, sets in figures.items()}
    return {m: sets for m, sets in below.items() if sets}


def module_text(figures: dict, sources: list[str]) -> str:
    lines = [
        '"""What each method gained on SSLSegment\'s label-efficiency bench. GENERATED: do not edit.',
        "",
        "``python bench/method_evidence.py`` writes this file from the committed reports",
        *(f"``{source}``," for source in sources),
        "and a test fails when it no longer matches them. :func:`SSLSegmentLib.catalogue.measured_text`",
        "words it for the panel, the web UI and ``sslsegment methods``.",
        '"""',
        "",
        f"SETTING = {SETTING!r}",
        "",
        "GAP_CLOSED: dict[str, dict[str, tuple[int, int | None, int]]] = {",
        '    # method: {set: (percent of the gap to full labels closed, rough standard error, runs)}',
    ]
    lines += [f"    {method!r}: {sets!r}," for method, sets in figures.items()]
    lines += ["}", "", f"BELOW_SUPERVISED = {{  # below supervised-only by more than {-100 * WORST_ALLOWED:.0f} % of the gap, "
              "beyond the error"]
    lines += [f"    {method!r}: {sets!r}," for method, sets in clearly_below(figures).items()]
    lines += ["}", ""]
    return "\n".join(lines)


def expected_module(pooled_path: Path = POOLED, tables_path: Path = TABLES, la_tables=LA_TABLES) -> str:
    pooled = json.loads(pooled_path.read_text(encoding="utf-8"))
    tables = json.loads(tables_path.read_text(encoding="utf-8"))["tables"]
    sources = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name for p in (pooled_path, tables_path)]
    return module_text(evidence(pooled, tables, la_tables), sources)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pooled", type=Path, default=POOLED)
    p.add_argument("--tables", type=Path, default=TABLES)
    p.add_argument("--la-tables", default=",".join(LA_TABLES), help="comma-separated; the first wins a seed both ran")
    p.add_argument("--out", type=Path, default=MODULE)
    p.add_argument("--check", action="store_true", help="exit 1 when --out differs from the reports")
    args = p.parse_args(argv)
    text = expected_module(args.pooled.resolve(), args.tables.resolve(), tuple(args.la_tables.split(",")))
    if args.check:
        stale = not args.out.exists() or args.out.read_text(encoding="utf-8") != text
        print(f"{args.out}: {'stale: run python bench/method_evidence.py' if stale else 'up to date'}")
        return int(stale)
    sys.path.insert(0, str(ROOT))
    from SSLSegmentLib.fileio import atomic_write_text  # noqa: PLC0415

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
