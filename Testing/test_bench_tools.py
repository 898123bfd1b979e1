"""The label-efficiency bench's pieces that need no data: the run order for one GPU call and
the goals table (issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import goals  # noqa: E402
from schedule import RunQueue, first_seed_tasks  # noqa: E402

BASELINES = ("supervised", "fully_supervised")


def test_first_seed_runs_baselines_then_slowest_methods_first():
    tasks = first_seed_tasks(["acdc", "la"], BASELINES, ["mean_teacher", "bcp", "ctct"], 1337)
    assert [t[1] for t in tasks] == ["supervised"] * 2 + ["fully_supervised"] * 2 + ["ctct"] * 2 + ["bcp"] * 2 \
        + ["mean_teacher"] * 2
    assert {t[0] for t in tasks[:2]} == {"acdc", "la"} and all(t[2] == 1337 for t in tasks)


def test_extra_seeds_go_to_the_baselines_then_the_best_methods_so_far():
    gaps = {"mean_teacher": 0.1, "bcp": 0.6, "cps": 0.3}
    queue = RunQueue(["acdc"], BASELINES, ["mean_teacher", "bcp", "cps"], [1337], [1338], 2, lambda: gaps)
    handed = []
    while (task := queue.next()) is not None:
        handed.append(task)
    assert handed[:5] == [("acdc", m, 1337) for m in ("supervised", "fully_supervised", "cps", "bcp", "mean_teacher")]
    assert handed[5:] == [("acdc", "supervised", 1338), ("acdc", "fully_supervised", 1338), ("acdc", "bcp", 1338),
                          ("acdc", "cps", 1338)]


def summary(gap, n=1):
    return {"gap_closed": gap, "n": n}


def test_goals_are_checked_per_table():
    results = {"supervised": summary(None, 3), "fully_supervised": summary(None, 3), "a": summary(0.7),
               "b": summary(0.3), "c": summary(0.26), "d": summary(0.25), "e": summary(-0.04)}
    met = goals.check(results)
    assert met["met"] == {"none_below": True, "four_good": True, "best_65": True} and met["best"] == "a"
    results["e"] = summary(-0.06)
    results["a"] = summary(0.6)
    met = goals.check(results)
    assert met["below"] == ["e"] and not met["met"]["none_below"] and not met["met"]["best_65"]
    assert goals.check({"supervised": summary(None), "a": summary(0.5)}) is None  # a baseline missing
    report = {"tables": {"acdc/cuda": {"results": results}}}
    text = "\n".join(goals.markdown_lines(report))
    assert "| acdc/cuda | 3 | e (-6 %) |" in text and "| a | 60 % |" in text


def test_goals_with_error_bars_are_shown_failed_or_not_shown():
    """A goal is shown when it holds across one error of every estimate, failed when it fails
    across it, and not shown otherwise."""
    estimates = {"a": (0.70, 0.04), "b": (0.40, 0.05), "c": (0.30, 0.04), "d": (0.28, 0.01), "e": (0.0, 0.03)}
    assert goals.check_with_errors(estimates) == {
        "clearly_below": [], "clearly_good": ["a", "b", "d", "c"], "none_below": "shown", "four_good": "shown",
        "best_65": "shown"}
    # c's error now reaches below 25 %, e's whole bar is below -5 %
    assert goals.check_with_errors({**estimates, "c": (0.30, 0.06), "e": (-0.2, 0.1)}) == {
        "clearly_below": ["e"], "clearly_good": ["a", "b", "d"], "none_below": "failed",
        "four_good": "not shown", "best_65": "shown"}
    assert goals.check_with_errors({"a": (0.6, 0.1), "b": (-0.1, 0.1)}) == {
        "clearly_below": [], "clearly_good": ["a"], "none_below": "not shown", "four_good": "failed",
        "best_65": "not shown"}
    assert goals.check_with_errors({"a": (0.5, 0.1)})["best_65"] == "failed"


def test_seed_noise_is_pooled_over_the_methods_run_at_several_seeds():
    results = {"supervised": {"gap_closed": None, "n": 3, "gap_closed_per_seed": {"1": 0.0, "2": 0.0}},
               "fully_supervised": summary(None, 3),
               "a": {"gap_closed": 0.5, "n": 2, "gap_closed_per_seed": {"1": 0.4, "2": 0.6}},
               "b": {"gap_closed": 0.2, "n": 3, "gap_closed_per_seed": {"1": 0.1, "2": 0.2, "3": 0.3}},
               "c": summary(-0.08), "d": summary(-0.3), "e": summary(-0.08, 3)}
    sd, pooled = goals.seed_noise(results)
    assert pooled == ["a", "b"] and abs(sd - ((0.02 + 0.01) / 2) ** 0.5) < 1e-9  # variances 0.02 and 0.01
    assert goals.seed_noise({"a": summary(0.5)}) is None
    text = "\n".join(goals.markdown_lines({"tables": {"acdc/cpu": {"results": results}}}))
    # one seed's noise is 12 %; e's mean over 3 seeds has 12 / sqrt(3) = 7 %, so its -8 % is beyond it, c's is not
    assert ("standard deviation of 12 % (pooled over a, b); a mean over n seeds varies sqrt(n) times "
            "less. Below supervised-only by more than the noise of its mean: d (1 seed), e (3 seeds).") in text


def test_teacher_model_carries_the_ema_teachers_weights(tmp_path):
    """bench/teacher_vs_student.py writes a model file the predictor loads, with the teacher's
    weights in place of the student's; a method without a teacher gives none."""
    import torch  # noqa: PLC0415

    import teacher_vs_student  # noqa: PLC0415
    from SSLSegmentLib.methods import MethodSettings, method_class  # noqa: PLC0415
    from SSLSegmentLib.networks import build_network  # noqa: PLC0415

    def factory(name=None, out_channels=None):
        return build_network("unet", 2, 1, 3, size="tiny")

    method = method_class("mean_teacher")(MethodSettings(), factory, 3, 2)
    with torch.no_grad():
        for parameter in method.teacher.parameters():
            parameter.add_(1.0)  # the teacher differs from the student
    train = tmp_path / "train"
    train.mkdir()
    torch.save({"state": method.state_dict()}, train / "checkpoint_last.pt")
    torch.save({"format": "sslsegment-model", "state_dict": method.student.state_dict(), "extra": {}}, train / "model.pt")
    assert teacher_vs_student.teacher_model(train, tmp_path / "teacher")
    model = torch.load(tmp_path / "teacher" / "model.pt", weights_only=True)
    teacher = method.teacher.state_dict()
    assert model["extra"]["weights"] == "ema_teacher" and set(model["state_dict"]) == set(teacher)
    assert all(torch.equal(model["state_dict"][k], teacher[k]) for k in teacher)
    torch.save({"state": method.student.state_dict()}, train / "checkpoint_last.pt")
    assert not teacher_vs_student.teacher_model(train, tmp_path / "none")


def test_label_efficiency_runs_every_catalogued_method_and_refuses_an_unknown_one():
    """A method added to the catalogue (UniMatch) is run, not silently left out; a misspelt
    name stops the bench instead of running only the baselines."""
    import label_efficiency  # noqa: PLC0415
    from SSLSegmentLib import catalogue  # noqa: PLC0415

    assert set(label_efficiency.METHODS) == {m.name for m in catalogue.METHODS} - {"supervised"}
    assert label_efficiency.selected_methods("bcp,unimatch,fixmatch") == ["fixmatch", "bcp", "unimatch"]
    with pytest.raises(SystemExit, match="unknown method unimatc"):
        label_efficiency.selected_methods("unimatc")


def test_a_loss_option_reaches_the_baselines_and_a_method_option_does_not(tmp_path):
    """``--method-option dice_over=batch`` changes every loss, so the gap of that table is
    measured between baselines trained with it; a method's own option stays its own."""
    import label_efficiency as le  # noqa: PLC0415

    args = le.parse_args(["--method-option", "dice_over=batch", "--method-option", "bcp_optimiser=new"])
    prepared = {"few": tmp_path / "few.json", "all": tmp_path / "all.json"}

    def options(method):
        words = le.train_arguments(method, 1337, le.budget_of(args, "acdc"), prepared, tmp_path, args)
        return [words[i + 1] for i, word in enumerate(words) if word == "--method-option"]

    assert options("supervised") == options("fully_supervised") == ["dice_over=batch"]
    assert options("bcp") == ["dice_over=batch", "bcp_optimiser=new"]


def test_largest_component_bench_compares_each_run_before_and_after_the_clean_up(tmp_path):
    """A prediction with a stray blob far from the organ: the clean-up removes it, and the
    report shows the Dice it gains."""
    import json

    import numpy as np
    import SimpleITK as sitk

    import largest_component

    truth = np.zeros((4, 32, 32), np.uint8)
    truth[1:3, 8:16, 8:16] = 1
    predicted = truth.copy()
    predicted[1:3, 24:30, 24:30] = 1  # the stray blob
    labels = tmp_path / "data" / "ACDC" / "val" / "labels"
    maps = tmp_path / "scratch" / "runs" / "acdc_tiny" / "supervised" / "seed1337" / "pred" / "labelmaps"
    for folder, array in ((labels, truth), (maps, predicted)):
        folder.mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "case1.nrrd"))
    results = tmp_path / "results"
    assert largest_component.main(["--scratch", str(tmp_path / "scratch"), "--data", str(tmp_path / "data"),
                                   "--results", str(results)]) == 0
    figures = json.loads((results / "largest_component.json").read_text())["acdc_tiny"]["supervised"]["seed1337"]
    assert figures["dice"] < 0.9 and figures["dice_cleaned"] == 1.0
    assert "| supervised | 1 |" in (results / "largest_component.md").read_text()
    assert largest_component.main(["--scratch", str(tmp_path / "none"), "--results", str(results)]) == 1


def test_dan_image_shortcut_reports_what_the_discriminator_calls_labelled():
    """bench/dan_image_shortcut.py trains DAN's discriminator on images alone and reports, per
    group of patches, the share it calls "labelled" (a share, at every ``every`` steps)."""
    import argparse  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    import dan_image_shortcut  # noqa: PLC0415
    from SSLSegmentLib.sampling import PatchSampler  # noqa: PLC0415

    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(3, 16, 16)).astype(np.float32) for _ in range(6)]
    labels = [np.zeros((3, 16, 16), np.uint8) for _ in range(4)]
    groups = {"trained_on": PatchSampler(volumes[:2], labels[:2], (16, 16), 2, 0.0),
              "held_out_labelled": PatchSampler(volumes[2:4], labels[2:4], (16, 16), 2, 0.0),
              "unlabelled": PatchSampler(volumes[4:], None, (16, 16), 2)}
    args = argparse.Namespace(seed=1, width=4, batch=2, steps=4, every=2)
    reports = dan_image_shortcut.train_discriminator(groups, 3, 4, args)
    assert [r["step"] for r in reports] == [2, 4]
    for report in reports:
        shares = [report[g] for g in ("training_accuracy", "trained_on", "held_out_labelled", "unlabelled")]
        assert all(0.0 <= s <= 1.0 for s in shares)
    run = {"dataset": "d", "cases": "c", "layers": 4, "reports": reports}
    text = dan_image_shortcut.markdown({"command": "x", "machine": "m", "runs": {"first, 4 layers": run}})
    assert "## first, 4 layers (strided convolutions)" in text and "| 4 |" in text


def test_acdc_split_is_ssl4mis_by_default_and_keeps_its_runs_apart():
    """SSL4MIS's seven labelled ACDC patients (the first of its shuffled train.list) by default;
    the first seven by number (all dilated hearts, the tables before stop 17) one flag away, in
    their own runs folder and table; a data set without SSL4MIS's patients is refused."""
    import label_efficiency as le  # noqa: PLC0415

    patients = [f"patient{i:03d}" for i in range(1, 101) if i not in (2, 19, 28, 30, 39, 45, 78, 82, 85, 87)]
    args = le.parse_args([])
    assert args.acdc_labelled == "ssl4mis"
    assert le.acdc_labelled_patients(patients, "ssl4mis") == set(le.ACDC_SSL4MIS_LABELLED)
    assert le.acdc_labelled_patients(patients, "first") == {f"patient{i:03d}" for i in (1, 3, 4, 5, 6, 7, 8)}
    with pytest.raises(SystemExit, match="patient099"):
        le.acdc_labelled_patients([p for p in patients if p != "patient099"], "ssl4mis")
    first = le.parse_args(["--acdc-labelled", "first"])
    assert le.runs_root("acdc", args).name == le.runs_root("acdc", first).name + "_ssl4mis-split"
    assert le.runs_root("la", args) == le.runs_root("la", first)
    assert (le.table_tag("acdc", args), le.table_tag("acdc", first), le.table_tag("la", args)) == (
        "ssl4mis-split/paired-streams", "paired-streams", "paired-streams")


def test_method_dropout_and_validation_hold_out_have_their_own_runs_folders():
    """``--dropout 0`` (a control: do the methods that add dropout lose by it?) and
    ``--val-cases 2`` (hold two labelled cases out, keep the best checkpoint) go into the budget
    and the runs folder's name, so those runs never mix with the default ones."""
    import label_efficiency as le  # noqa: PLC0415

    own, control = le.parse_args([]), le.parse_args(["--dropout", "0"])
    assert "method_dropout" not in le.budget_of(own, "acdc")
    assert le.budget_of(control, "acdc")["method_dropout"] == 0.0
    assert le.runs_root("acdc", control).name == le.runs_root("acdc", own).name.replace(
        "_ssl4mis-split", "_dropout0_ssl4mis-split")
    held_out = le.parse_args(["--val-cases", "2"])
    assert le.budget_of(own, "acdc")["validation"].startswith("none")
    assert le.budget_of(held_out, "acdc")["validation"].startswith("2 labelled case(s) held out")
    assert le.runs_root("la", held_out).name == le.runs_root("la", own).name + "_val2"
    unweighted = le.parse_args(["--consistency", "0"])  # a method without its unlabelled term
    assert le.budget_of(unweighted, "acdc")["method_consistency"] == 0.0
    assert le.runs_root("acdc", unweighted).name == le.runs_root("acdc", own).name.replace(
        "_ssl4mis-split", "_consistency0_ssl4mis-split")


def test_confidence_ranking_uses_the_networks_confidence_and_counts_the_worst_cases_caught(tmp_path):
    """Spearman's rho over a run's cases and the worst k found among the k least confident;
    a case the domain check set to 0 ranks by its confidence before the check."""
    import math  # noqa: PLC0415

    import confidence_ranking as cr  # noqa: PLC0415

    assert cr.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert cr.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert math.isclose(cr.spearman([1, 1, 2, 3], [1, 2, 3, 4]), 0.9486832980505138)
    dice = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.2}
    confidence = {"a": 0.95, "b": 0.9, "c": 0.92, "d": 0.0}  # d flagged: 0.5 before the check
    run = tmp_path / "runs" / "acdc_x" / "bcp" / "seed1"
    (run / "pred").mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"cases": {n: {"label_1": {"dice": d}, "label_2": {"dice": d}}
                                                         for n, d in dice.items()}}))
    (run / "pred" / "confidence.json").write_text(json.dumps(confidence))
    (run / "pred" / "out_of_domain.json").write_text(json.dumps({"d": {"confidence_before": 0.5, "problems": ["x"]}}))
    figures = cr.run_ranking(run, k=2)
    assert figures == {"cases": 4, "spearman": 1.0, "worst_caught": 2, "k": 2, "out_of_domain": 1}
    confidence["c"] = 0.1  # now c (third best) is among the two least confident, b is not
    (run / "pred" / "confidence.json").write_text(json.dumps(confidence))
    assert cr.run_ranking(run, k=2)["worst_caught"] == 1
    cr.main(["--scratch", str(tmp_path), "--results", str(tmp_path / "results"), "--k", "2"])
    summary = json.loads((tmp_path / "results" / "confidence_ranking.json").read_text())["folders"]["acdc_x"]
    assert summary["runs_out_of_domain"] == 1 and summary["chance_worst_caught"] == 1.0


def test_runs_of_paired_batch_streams_never_mix_with_earlier_runs(tmp_path):
    """Runs of this code (labelled and unlabelled batches from separate generators) go into
    ``_paired`` folders, so ``--resume`` cannot pair a method of this code with a baseline of
    the earlier one-generator stream; the earlier folders are reported, never trained into."""
    import label_efficiency as le  # noqa: PLC0415
    import time_budget as tb  # noqa: PLC0415

    paired, earlier = le.parse_args([]), le.parse_args(["--batch-streams", "interleaved", "--report-only"])
    assert le.runs_root("acdc", paired).name == le.runs_root("acdc", earlier).name.replace(
        "adamw0.001", "adamw0.001_paired")
    assert le.runs_root("acdc", earlier).name == "acdc_3mm_3000it_p128x128_b4_adamw0.001_ssl4mis-split"  # stop 18's
    with pytest.raises(SystemExit):
        le.parse_args(["--batch-streams", "interleaved"])
    assert tb.run_folder(tmp_path, "acdc", "bcp", 5, 1).parent.parent.name == "acdc_ssl4mis-split_paired"
    assert tb.run_folder(tmp_path, "acdc", "bcp", 5, 1, batch_streams="interleaved").parent.parent.name == (
        "acdc_ssl4mis-split")
    assert "separate generators" in le.STREAMS_TEXT["paired"]
    assert (le.table_tag("acdc", paired), le.table_tag("acdc", earlier)) == (
        "ssl4mis-split/paired-streams", "ssl4mis-split")  # side by side in tables.json, not one in the other's place


def test_a_deadline_after_midnight_is_tomorrows():
    """``--deadline 01:25`` given at 23:00 leaves 2 h 25 min; comparing clock times stopped such a
    chain before its first run (stop 19)."""
    import argparse  # noqa: PLC0415
    import datetime  # noqa: PLC0415

    import label_efficiency as le  # noqa: PLC0415

    evening = datetime.datetime(2026, 11, 30, 23, 0, tzinfo=datetime.timezone.utc)
    assert le.deadline_after_now("01:25", evening) - evening == datetime.timedelta(hours=2, minutes=25)
    assert le.deadline_after_now("23:30", evening) - evening == datetime.timedelta(minutes=30)
    with pytest.raises(argparse.ArgumentTypeError, match="HH:MM"):
        le.deadline_after_now("1.25", evening)
    assert isinstance(le.parse_args(["--deadline", "01:25"]).deadline, datetime.datetime)


def test_pooled_baseline_sets_every_run_against_every_supervised_equivalent_run(tmp_path):
    """Runs of a method in several folders are pooled; the supervised-only runs (a run copied
    into two folders counts once) and the control runs make the baseline."""
    import pooled_baseline as pb  # noqa: PLC0415

    def result(folder, method, seed, dice):
        path = tmp_path / "runs" / folder / method / f"seed{seed}" / "bench_result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"dice": dice}))

    for folder in ("acdc_x", "acdc_x_paired"):
        result(folder, "supervised", 1, 0.60)
        result(folder, "fully_supervised", 1, 0.90)
    result("acdc_x", "supervised", 2, 0.70)
    result("acdc_x", "bcp", 1, 0.80)
    result("acdc_x_paired", "bcp", 1, 0.70)
    control = tmp_path / "controls" / "mt_c0.0001"
    control.mkdir(parents=True)
    (control / "eval.json").write_text(json.dumps({"mean": {"all": {"dice": 0.65}}}))
    pb.main(["--scratch", str(tmp_path), "--folders", "acdc_x,acdc_x_paired", "--controls", "controls/mt_c*",
             "--results", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "pooled_baseline.json").read_text())
    assert [d for _, d in report["baseline"]["runs"]] == [0.60, 0.70, 0.65]  # seed 1 once
    assert abs(report["gap"] - 0.25) < 1e-9
    bcp = report["methods"]["bcp"]
    assert abs(bcp["gap_closed"] - 0.40) < 1e-9 and len(bcp["runs"]) == 2
    assert [label for label, _ in bcp["runs"]] == ["seed1, one generator", "seed1, paired streams"]
    assert "| bcp | 2 | 0.750 ± 0.071 | 40 %" in (tmp_path / "out" / "pooled_baseline.md").read_text()
    # on a machine without the control folders, their figures come from the earlier report
    pb.main(["--scratch", str(tmp_path), "--folders", "acdc_x", "--controls-from", str(tmp_path / "out" /
             "pooled_baseline.json"), "--results", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "pooled_baseline.json").read_text())
    assert again["baseline"]["runs"] == [["seed1, one generator", 0.60], ["seed2, one generator", 0.70],
                                         ["mt_c0.0001", 0.65]]
    # a method whose default moved is pooled from the runs at its new default only
    result("acdc_x_paired_lower", "bcp", 1, 0.85)
    pb.main(["--scratch", str(tmp_path), "--folders", "acdc_x,acdc_x_paired", "--method-folders",
             "bcp=acdc_x_paired_lower", "--results", str(tmp_path / "moved")])
    moved = json.loads((tmp_path / "moved" / "pooled_baseline.json").read_text())["methods"]["bcp"]
    assert moved["runs"] == [["seed1, paired streams", 0.85]]
    # a label-efficiency run that trains supervised-only up to float (URPC, main output, weight 0)
    # is a control, labelled by its folder so that it never passes for seed 1's supervised run
    result("acdc_x_paired_urpc_main_consistency0", "urpc", 1, 0.62)
    pb.main(["--scratch", str(tmp_path), "--folders", "acdc_x", "--controls",
             "runs/acdc_x_paired_urpc_main_consistency0/urpc/seed*", "--results", str(tmp_path / "bench_control")])
    baseline = json.loads((tmp_path / "bench_control" / "pooled_baseline.json").read_text())["baseline"]
    assert baseline["runs"] == [["seed1, one generator", 0.60], ["seed2, one generator", 0.70],
                                ["acdc_x_paired_urpc_main_consistency0/urpc/seed1", 0.62]]
    # seed 1's two runs give the spread within a seed: sd of (0.60, 0.62)
    assert baseline["by_seed"]["seeds"] == {"1": [0.60, 0.62], "2": [0.70]}
    assert abs(baseline["by_seed"]["within_sd"] - 0.02 / 2 ** 0.5) < 1e-9
    assert "By seed (1: 0.600, 0.620; 2: 0.700): the sd within a seed is 0.014" in (
        tmp_path / "bench_control" / "pooled_baseline.md").read_text()


def test_restored_run_folders_give_back_the_same_tables(tmp_path, monkeypatch):
    """``restore_runs.py`` writes a report's folders back (a fresh machine resumes the tables):
    the folder each table names, derived from the budget where meta.json did not record it
    (reports before stop 20), and a report rewritten from the restored runs equals the first."""
    import label_efficiency as le  # noqa: PLC0415
    import restore_runs  # noqa: PLC0415

    settings = [[], ["--val-cases", "2", "--tag", "val2"], ["--dropout", "0", "--tag", "dropout0"],
                ["--method-option", "urpc_heads=reference", "--tag", "heads"],
                ["--acdc-labelled", "first"], ["--batch-streams", "interleaved", "--report-only"]]
    monkeypatch.setattr(le, "SCRATCH", tmp_path / "first")
    for argv in settings:
        args = le.parse_args(argv)
        split = {"labelled_by": "SSL4MIS's seven" if args.acdc_labelled == "ssl4mis" else "the first 7 by number"}
        root = le.start_table("acdc", ["bcp"], {"spacing": "3 x 3 mm in-plane", "split": split}, args, "cmd")
        for method, dice in (("supervised", 0.6), ("fully_supervised", 0.8), ("bcp", 0.7)):
            (root / method / "seed1337").mkdir(parents=True)
            le.atomic_write_json(root / method / "seed1337" / "bench_result.json",
                                 {"dice": dice + len(argv) / 100, "hd95": 5.0, "s_per_iteration": 0.1,
                                  "per_class": {"label_1": {"dice": dice, "hd95": 5.0}},
                                  "train_s": 1.0, "predict_s": 1.0})
    report = le.collect_report()
    assert len(report["tables"]) == len(settings)
    without_folder = {"tables": {t: {k: v for k, v in m.items() if k != "folder"} for t, m in report["tables"].items()}}
    restored = restore_runs.restore(without_folder, tmp_path / "second")
    assert set(restored.values()) == {3}
    monkeypatch.setattr(le, "SCRATCH", tmp_path / "second")
    assert le.load_tables() == {t: f for t, f in json.loads((tmp_path / "first" / "tables.json").read_text()).items()}
    again = le.collect_report()
    for table, meta in report["tables"].items():
        meta.pop("folder")
        assert again["tables"][table] == meta, table
    assert restore_runs.restore(report, tmp_path / "second") == dict.fromkeys(report["tables"], 0)  # kept as they are
    # a run on disk with another result (a later run, another report's) is never replaced
    table = next(iter(report["tables"]))
    report["tables"][table]["runs"]["bcp"]["1337"]["dice"] = 0.1
    with pytest.raises(SystemExit, match="differ from the report's"):
        restore_runs.restore(report, tmp_path / "second")
    assert le.collect_report()["tables"][table]["runs"]["bcp"]["1337"]["dice"] != 0.1


def test_composed_report_keeps_the_written_sections_and_replaces_the_generated_tables():
    from compose_report import GENERATED_TITLE, compose  # noqa: PLC0415

    report = f"# Title\n\n## Stop 2\n\nold reading\n\n{GENERATED_TITLE}\n\nold tables\n"
    new = compose(report, f"{GENERATED_TITLE}\n\nnew tables\n", "## Stop 3\n\nnew reading\n")
    assert new == f"# Title\n\n## Stop 3\n\nnew reading\n\n## Stop 2\n\nold reading\n\n{GENERATED_TITLE}\n\nnew tables\n"
    assert compose(new, f"{GENERATED_TITLE}\n\nnew tables\n") == new
    with pytest.raises(ValueError, match="generated part"):
        compose(report, "# Something else\n")


def test_a_data_folder_without_images_is_named_in_the_error(tmp_path):
    """A wrong ``--data`` says so, rather than that ACDC lacks SSL4MIS's patients."""
    import label_efficiency as le  # noqa: PLC0415
    import time_budget as tb  # noqa: PLC0415

    with pytest.raises(SystemExit, match=f"no NRRD images in {tmp_path}/ACDC/train/images: --data"):
        le.prepare_acdc(le.parse_args(["--data", str(tmp_path)]))
    with pytest.raises(SystemExit, match="no NRRD images in .*LA/train/images"):
        tb.prepare("la", tmp_path, tmp_path / "scratch")


def test_time_budget_report_names_the_split_and_the_batch_streams(tmp_path):
    import argparse  # noqa: PLC0415

    import time_budget as tb  # noqa: PLC0415

    run = {"dataset": "acdc", "method": "bcp", "minutes": 5, "seed": 1, "dice": 0.7, "hd95": 40.0, "iterations": 9,
           "train_s": 290.0, "predict_s": 11.0, "plan": {"seconds_per_iteration": 0.2}, "patch": [128, 128],
           "spacing": [3.0, 3.0, 10.0], "precision": "auto", "load_1min": 2.0}
    for split, text in (("ssl4mis", "SSL4MIS's seven"), ("first", "the first 7 by number")):
        args = argparse.Namespace(threads=1, note="", acdc_labelled=split, batch_streams="paired", results=tmp_path)
        tb.report([run], args)
        markdown = (tmp_path / "time_budget.md").read_text()
        assert f"Labelled patients: {text} (`--acdc-labelled`). Labelled and unlabelled batches from separate" in markdown
        assert "| 5 | bcp | 0.700 | 40.0 | 9 | 0.200 | 290 | 11 | 2.0 |" in markdown


def test_split_sizes_compares_the_labelled_set_with_the_pool_and_a_runs_predictions(tmp_path):
    """Two ACDC patients labelled with a twice larger LV than the pool's; a run that predicts
    the evaluation case's LV 1.5 times too large and its RV half as large."""
    import json

    import numpy as np
    import SimpleITK as sitk

    import split_sizes

    def write(folder, name, lv_rows, rv_rows=4, spacing=(2.0, 2.0, 5.0)):
        array = np.zeros((2, 16, 16), np.uint8)
        array[:, :lv_rows, :4] = 3
        array[:, :rv_rows, 8:12] = 1
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / name))
        return folder / name

    data = tmp_path / "data"
    patients = [f"patient{n:03d}" for n in range(1, 101)]  # the SSL4MIS ones included
    labelled = set(split_sizes.acdc_labelled_patients(patients, "ssl4mis"))
    for patient in ("patient021", "patient038", "patient049", "patient050", "patient058", "patient099",
                    "patient100", "patient001", "patient002"):
        for folder in ("images", "labels"):
            write(data / "ACDC" / "train" / folder, f"{patient}_frame01.nrrd", 8 if patient in labelled else 4)
    for folder in ("images", "labels"):
        write(data / "ACDC" / "val" / folder, "patient101_frame01.nrrd", 4)
    run = tmp_path / "runs" / "acdc_3mm_3000it_p128x128_b4_adamw0.001_paired_ssl4mis-split" / "dct" / "seed1337"
    write(run / "pred" / "labelmaps", "patient101_frame01.nrrd", 6, rv_rows=2)
    results = tmp_path / "results"
    assert split_sizes.main(["--data", str(data), "--datasets", "acdc", "--results", str(results),
                             "--runs", str(run)]) == 0
    report = json.loads((results / "split_sizes.json").read_text())
    ssl4mis = report["splits"][0]
    assert ssl4mis["volumes"] == {"labelled": 7, "unlabelled": 2, "evaluation": 1}
    assert ssl4mis["mean_ml"]["labelled"]["LV"] == 8 * 4 * 2 * 20 / 1000  # voxels x 20 mm^3
    assert ssl4mis["labelled_over_unlabelled"] == {"RV": 1.0, "Myo": None, "LV": 2.0}  # no Myo anywhere
    assert report["predicted_over_true"] == {"dct seed1337 (paired_ssl4mis-split)": {"RV": 0.5, "LV": 1.5}}


def test_runs_at_a_methods_old_default_move_to_a_side_table(tmp_path, monkeypatch):
    """``move_runs.py``: after a method's default weight changed, its runs leave the main table
    for the folder ``--consistency OLD`` gives (baselines copied), the main table stops planning
    it (so ``--resume`` trains it afresh), and a move never overwrites runs."""
    import label_efficiency as le  # noqa: PLC0415
    import move_runs  # noqa: PLC0415

    monkeypatch.setattr(le, "SCRATCH", tmp_path)
    main = le.start_table("acdc", ["adversarial", "bcp"], {"spacing": "3 x 3 mm", "split": {"labelled_by": "SSL4MIS"}},
                          le.parse_args([]), "cmd")
    for method in ("supervised", "fully_supervised", "adversarial", "bcp"):
        (main / method / "seed1337").mkdir(parents=True)
        (main / method / "seed1337" / "bench_result.json").write_text(json.dumps(
            {"dice": 0.5, "hd95": 5.0, "s_per_iteration": 0.1, "per_class": {"label_1": {"dice": 0.5, "hd95": 5.0}},
             "train_s": 1.0, "predict_s": 1.0}))
    (table,) = le.load_tables()

    side_table = move_runs.move(tmp_path, table, "adversarial", 0.1, "dan-weight0.1")
    side = tmp_path / "runs" / le.load_tables()[side_table]
    assert side == le.runs_root("acdc", le.parse_args(["--consistency", "0.1"])) and side_table == f"{table}/dan-weight0.1"
    assert sorted(p.name for p in side.iterdir()) == ["adversarial", "fully_supervised", "meta.json", "supervised"]
    assert not (main / "adversarial").exists() and (main / "supervised" / "seed1337").is_dir()
    side_meta, main_meta = (json.loads((f / "meta.json").read_text()) for f in (side, main))
    assert side_meta["budget"]["method_consistency"] == 0.1 and side_meta["planned"] == [*BASELINES, "adversarial"]
    assert "adversarial" not in main_meta["planned"] and side_table in main_meta["note"]
    assert [m for m, _ in le.collect_report()["tables"][side_table]["results"].items()] == \
        ["supervised", "fully_supervised", "adversarial"]
    with pytest.raises(SystemExit, match="no adversarial runs"):
        move_runs.move(tmp_path, table, "adversarial", 0.1, "dan-weight0.1")
    (side / "bcp").mkdir()
    with pytest.raises(SystemExit, match="exists already"):
        move_runs.move(tmp_path, table, "bcp", 0.1, "dan-weight0.1")
    assert (main / "bcp" / "seed1337").is_dir()
    # a table left with only its baselines is no longer reported (its folder stays)
    (side / "bcp").rmdir()
    move_runs.move(tmp_path, table, "bcp", 0.1, "dan-weight0.1")
    assert table not in le.load_tables() and (main / "meta.json").exists()


@pytest.mark.slow
def test_a_bench_run_killed_mid_training_goes_on_from_its_checkpoint(phantom_data, tmp_path, monkeypatch):
    """``--resume`` deleted a run that had not finished and trained it again from the start, so
    a run longer than a session (CTCT on LA: two hours on 2 cores) could never finish. It now
    goes on with ``sslsegment train --resume`` from the last checkpoint, and the result counts
    the loop time of both stretches and says where it resumed. A run killed after its training
    (while predicting or evaluating) keeps its model and does only those again."""
    import label_efficiency as le  # noqa: PLC0415
    from SSLSegmentLib.data import case_name  # noqa: PLC0415
    from SSLSegmentLib.training.run_folder import RunFolder  # noqa: PLC0415

    monkeypatch.setattr(le, "SCRATCH", tmp_path / "bench")
    args = le.parse_args(["--resume", "--la-iterations", "20", "--la-patch", "16,32,32", "--size", "tiny",
                          "--num-workers", "0"])
    images, labels = phantom_data["images"], phantom_data["labels"]
    labelled = [(images / f"{case_name(p)}.nrrd", p) for p in sorted(labels.iterdir())]
    unlabelled = [p for p in sorted(images.iterdir()) if p not in {i for i, _ in labelled}]
    classes = {"0": "background", "1": "organ", "2": "lesion"}
    few = le.write_dataset_json(tmp_path / "few.json", classes, labelled, unlabelled)
    prepared = {"few": few, "all": few, "eval_images": phantom_data["test_images"],
                "eval_labels": phantom_data["test_labels"]}
    run = le.runs_root("la", args) / "mean_teacher" / "seed1337"
    run.mkdir(parents=True)
    command = le.train_arguments("mean_teacher", 1337, le.budget_of(args, "la"), prepared, run, args)
    killed = subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", *command], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = RunFolder(run / "train")
    deadline = time.monotonic() + 180
    while not any(r.get("iteration", 0) >= 6 for r in progress.read_progress()):
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    killed.kill()
    killed.wait(timeout=60)
    assert le.interrupted_training(run / "train")
    first_stretch = le.loop_seconds(run / "train")

    result = le.run_method("la", "mean_teacher", 1337, prepared, args)
    assert result["resumed_from"] and result["resumed_from"][0] >= 4
    assert (run / "train" / "model.pt").exists() and not le.interrupted_training(run / "train")
    assert progress.read_status()["state"] == "done"
    assert result["train_s"] > first_stretch > 0
    stretches = le.loop_segments(run / "train")
    assert len(stretches) == 2 and stretches[1][0] == 20 - result["resumed_from"][0]
    assert result["loop_s_per_iteration"] == round(sum(s for _, s in stretches) / sum(n for n, _ in stretches), 4)
    assert 0 <= result["dice"] <= 1
    assert le.run_method("la", "mean_teacher", 1337, prepared, args) == result  # done: skipped

    # killed after its training, while predicting or evaluating: those alone are done again
    (run / "bench_result.json").unlink()
    shutil.rmtree(run / "pred")
    model_bytes = (run / "train" / "model.pt").read_bytes()
    again = le.run_method("la", "mean_teacher", 1337, prepared, args)
    assert (run / "train" / "model.pt").read_bytes() == model_bytes
    assert again["dice"] == result["dice"] and again["resumed_from"] == result["resumed_from"]
    assert again["train_s"] == round(le.loop_seconds(run / "train"), 1)


def test_a_variant_run_without_a_tag_cannot_take_over_the_methods_table(tmp_path, monkeypatch):
    """A run with ``--consistency 1`` and no ``--tag`` re-pointed the main table at its own
    folder, so the report showed the variant's runs as the methods' defaults. It is refused,
    naming both folders and ``--tag``; with a tag it gets a table of its own."""
    import label_efficiency as le  # noqa: PLC0415

    monkeypatch.setattr(le, "SCRATCH", tmp_path)
    prepared = {"spacing": "3 x 3 mm", "split": {"labelled_by": "SSL4MIS"}}
    main = le.start_table("acdc", ["urpc"], prepared, le.parse_args([]), "cmd")
    (table,) = le.load_tables()
    with pytest.raises(SystemExit, match=f"table {table} reports the runs in {main.name}.*--tag"):
        le.start_table("acdc", ["urpc"], prepared, le.parse_args(["--consistency", "1"]), "cmd")
    assert le.load_tables() == {table: main.name}
    assert le.start_table("acdc", ["urpc"], prepared, le.parse_args([]), "again") == main  # the same folder: fine
    variant = le.start_table("acdc", ["urpc"], prepared, le.parse_args(["--consistency", "1", "--tag", "weight1"]), "cmd")
    assert le.load_tables() == {table: main.name, f"{table}/weight1": variant.name} and variant != main
