"""What the method pickers say each method gained: written from the committed bench reports,
never stale, and worded so that a method worse than supervised-only says so."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT, run_cli

sys.path.insert(0, str(ROOT / "bench"))

import method_evidence  # noqa: E402

from SSLSegmentLib import catalogue, measured_gain  # noqa: E402


def test_the_product_figures_are_those_of_the_committed_reports():
    """Re-running a bench and committing its report without ``python bench/method_evidence.py``
    leaves the pickers showing old figures: this fails until the module is rewritten."""
    expected = method_evidence.expected_module()
    assert (ROOT / "SSLSegmentLib" / "measured_gain.py").read_text(encoding="utf-8") == expected, (
        "SSLSegmentLib/measured_gain.py is stale: run python bench/method_evidence.py")
    assert method_evidence.main(["--check"]) == 0


def _table(results: dict) -> dict:
    return {"results": {"supervised": {"gap_closed": None, "n": 1}, **results}}


def test_evidence_pools_acdc_and_la_seed_by_seed():
    pooled = {"methods": {"good": {"runs": [["a", 0.8], ["b", 0.8]], "gap_closed": 0.661, "gap_closed_error": 0.071},
                          "bad": {"runs": [["a", 0.4]], "gap_closed": -0.30, "gap_closed_error": 0.02},
                          "noisy": {"runs": [["a", 0.6]], "gap_closed": -0.09, "gap_closed_error": 0.05}}}
    tables = {
        "la/cpu": _table({"good": {"gap_closed": 0.5, "n": 3, "gap_closed_per_seed": {"1": 0.4, "2": 0.5, "3": 0.6}},
                          "bad": {"gap_closed": 0.02, "n": 1, "gap_closed_per_seed": {"1": 0.02}}}),
        "la/cpu/paired-streams": _table({"bad": {"gap_closed": -0.9, "n": 1, "gap_closed_per_seed": {"1": -0.9}},
                                         "good": {"gap_closed": 0.3, "n": 1, "gap_closed_per_seed": {"4": 0.3}},
                                         "only_here": {"gap_closed": 0.1, "n": 1}}),
    }
    figures = method_evidence.evidence(pooled, tables, la_moved={})
    # seeds 1 to 3 from la/cpu, seed 4 from the other table: mean 0.45, sd 0.129 / sqrt(4)
    assert figures["good"] == {"ACDC": (66, 7, 2), "LA": (45, 6, 4)}
    assert figures["bad"] == {"ACDC": (-30, 2, 1), "LA": (2, None, 1)}  # la/cpu wins the seed both ran
    assert figures["only_here"] == {"LA": (10, None, 1)}  # no per-seed gaps: the table's figure, once
    # Below by more than 5 % beyond the error: "bad" on ACDC; "noisy" (-9 ± 5) is within it.
    assert method_evidence.clearly_below(figures) == {"bad": ["ACDC"]}
    # a method whose default moved: LA from the tables at its new default alone, or none
    tables["la/cpu/paired-streams/lower-weight"] = _table(
        {"bad": {"gap_closed": 0.1, "n": 1, "gap_closed_per_seed": {"1": 0.1}}})
    moved = method_evidence.evidence(pooled, tables, la_moved={"bad": ("la/cpu/paired-streams/lower-weight",),
                                                               "good": ("la/cpu/paired-streams/none-yet",)})
    assert moved["bad"]["LA"] == (10, None, 1) and "LA" not in moved["good"]


def test_the_wording_says_where_a_method_is_worse_than_supervised_only():
    below = next(iter(measured_gain.BELOW_SUPERVISED))
    text = catalogue.measured_text(below)
    assert "worse than supervised-only on " + " and ".join(measured_gain.BELOW_SUPERVISED[below]) in text
    assert measured_gain.SETTING in text
    gap, error, runs = measured_gain.GAP_CLOSED[catalogue.DEFAULT_METHOD]["ACDC"]
    assert catalogue.measured_figures(catalogue.DEFAULT_METHOD).startswith(f"ACDC {gap} ± {error} % ({runs} runs)")
    assert "worse" not in catalogue.measured_figures(catalogue.DEFAULT_METHOD)
    assert catalogue.measured_text("supervised") == ""  # the baseline is not measured against itself


def test_the_cli_lists_the_default_first_with_each_methods_figures():
    lines = run_cli("methods", check=True).stdout.splitlines()
    assert lines[0].startswith(f"{catalogue.DEFAULT_METHOD} (default) ")
    assert lines[1].split() == ["gap", "closed:", *catalogue.measured_figures(catalogue.DEFAULT_METHOD).split()]
    assert lines[-1] == f"gap closed: {catalogue.MEASURED_MEANING}."


def test_a_reader_that_stops_early_ends_the_listing_quietly():
    """``sslsegment methods | head -1``: the pipe closes before the listing is written, and the
    command ends with exit 0 and no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lister = subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", "methods"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, cwd=ROOT)
    lister.stdout.close()  # the reader is gone before the first line
    errors = lister.stderr.read().decode()
    assert lister.wait(timeout=120) == 0, errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors
