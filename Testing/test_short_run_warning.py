"""A run too short for its method to gain from the unlabelled cases says so.

BCP below about 1000 iterations in 2D (200 in 3D) did worse than supervised-only training on the same labels
(``bench/results/time_budget*.md``): a clinician who asks for 2 minutes must be told, in the
log, the progress, ``status.json`` and the panel's status line, not find out from the result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from helpers import train_in_process, write_two_labelled_cases

from SSLSegmentLib import jobs
from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import discover_dataset
from SSLSegmentLib.job_folder import round_summary
from SSLSegmentLib.methods import method_class
from SSLSegmentLib.methods.base import short_run_warning
from SSLSegmentLib.run_protocol import SHORT_RUN, current_warnings, read_progress
from SSLSegmentLib.training.lifecycle import train_run
from SSLSegmentLib.training.outputs import TrainerOutputs
from SSLSegmentLib.training.run_folder import RunFolder


def _warnings_in(run) -> tuple[list[str], list[str]]:
    """status.json's warnings, and those the progress records stand by (what the panel shows)."""
    status = json.loads((run / "status.json").read_text())
    return status.get("warnings", []), current_warnings(read_progress(run))


def test_the_rule_names_the_iterations_and_the_method():
    bcp = method_class("bcp")
    assert bcp.min_useful_iterations == {2: 1000, 3: 200}
    assert short_run_warning(bcp, 1000, 2) is None and short_run_warning(bcp, 200, 3) is None
    message = short_run_warning(bcp, 420, 2)
    assert "420 iterations" in message and "1000" in message and "bcp" in message and "in 2D" in message
    assert "--method supervised" in message
    assert "the 200 that bcp needs in 3D" in short_run_warning(bcp, 165, 3)  # LA's 2-minute run
    assert short_run_warning(method_class("supervised"), 1, 2) is None  # nothing to gain, nothing to lose


def test_a_short_bcp_run_ends_done_with_the_warning_everywhere_a_watcher_looks(tmp_path, capsys):
    code, _, run = train_in_process(write_two_labelled_cases(tmp_path), capsys, "--method", "bcp")
    assert code == 0
    in_status, in_progress = _warnings_in(run)
    assert in_status == in_progress and len(in_status) == 1 and in_status[0].startswith("1 iterations")
    assert "200 that bcp needs in 3D" in (run / "log.txt").read_text()
    assert round_summary(run, {})["warnings"] == in_status


def test_a_short_supervised_run_has_no_warning(tmp_path, capsys):
    code, _, run = train_in_process(write_two_labelled_cases(tmp_path), capsys, "--method", "supervised")
    assert code == 0 and "fewer than the" not in (run / "log.txt").read_text()
    assert _warnings_in(run) == ([], [])
    assert "warnings" not in json.loads((run / "status.json").read_text())


def test_a_time_budget_warns_once_it_has_fixed_a_count_too_short(phantom_data, tmp_path, monkeypatch):
    # a bound no 3-second budget reaches, whatever the machine's pace
    monkeypatch.setattr(method_class("bcp"), "min_useful_iterations", {3: 10**6})
    run = RunFolder(tmp_path / "run")
    config = TrainConfig(method="bcp", size="tiny", dim="3", patch_size=(16, 32, 32), time_budget=0.05,
                         iterations=5000, val_cases=0, device="cpu", cache_dir=str(tmp_path / "cache"), seed=3)
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    train_run(run, lambda: (config, dataset), logging.getLogger("test_short_run"))
    plan = json.loads(run.budget.read_text())
    in_status, in_progress = _warnings_in(run.path)
    assert in_status and in_status == in_progress
    assert in_status[-1].startswith(f"{plan['iterations']} iterations are fewer than the 1000000")
    progress = run.read_progress()
    first_warning = next(i for i, r in enumerate(progress) if r.get("event") == "warning")
    first_budget = next(i for i, r in enumerate(progress) if r.get("event") == "budget")
    assert first_budget < first_warning  # said once the count was known, not before


def test_the_panel_status_line_carries_the_warning_of_a_finished_round(tmp_path, capsys):
    code, _, run = train_in_process(write_two_labelled_cases(tmp_path), capsys, "--method", "bcp")
    job = jobs.Job(jobs.JobFolder(tmp_path / "job"), 1, ["true"])
    job.history = read_progress(run)
    job._state, job.error = jobs.DONE, None
    assert job.warnings() and jobs.status_text(job).startswith("Round 1: done - warning: 1 iterations are fewer")


def test_unimatch_warns_below_the_counts_at_which_it_was_measured_ahead():
    unimatch = method_class("unimatch")
    assert short_run_warning(unimatch, 3000, 2) is None and short_run_warning(unimatch, 2000, 3) is None
    assert "the 3000 that unimatch needs in 2D" in short_run_warning(unimatch, 1431, 2)
    assert "the 2000 that unimatch needs in 3D" in short_run_warning(unimatch, 318, 3)


class _Recorder(TrainerOutputs):
    """The trainer's warning piece on its own: records what it writes to the progress stream."""

    def __init__(self, method_name, dim):
        self.method, self.warnings, self.records = method_class(method_name), [], []
        self.data = SimpleNamespace(plan=SimpleNamespace(dim=dim))
        self.run = SimpleNamespace(add_progress=self.records.append)
        self.context, self.log = SimpleNamespace(is_main=True), logging.getLogger("test_short_run")


def test_a_new_count_replaces_the_warning_and_a_long_enough_one_withdraws_it():
    """A time budget fixes its count several times (a 2-minute BCP run: 936, 819, ... 550): the
    status and the panel show one warning with the count the run does, not the first of eight."""
    trainer = _Recorder("bcp", 2)
    for count in (936, 819, 819, 550):
        trainer.warn_if_short_run(count)
    assert trainer.warnings == [short_run_warning(method_class("bcp"), 550, 2)]
    assert current_warnings(trainer.records) == trainer.warnings and len(trainer.records) == 3  # 819 once
    assert all(r["key"] == SHORT_RUN for r in trainer.records)
    trainer.warnings.insert(0, "case 'x': spacing far from the others")  # another warning stays where it is
    trainer.warn_if_short_run(1200)
    assert trainer.warnings == ["case 'x': spacing far from the others"]
    assert current_warnings(trainer.records) == []


def test_the_panel_shows_the_latest_count_of_a_short_run():
    job = jobs.Job(jobs.JobFolder(Path("unused")), 1, ["true"])
    job.history = [{"event": "warning", "key": SHORT_RUN, "message": "936 iterations are fewer"},
                   {"event": "warning", "message": "other"},
                   {"event": "warning", "key": SHORT_RUN, "message": "550 iterations are fewer"}]
    assert job.warnings() == ["550 iterations are fewer", "other"]
    job._state, job.error = jobs.DONE, None
    assert jobs.status_text(job) == "Round 1: done - warning: 550 iterations are fewer"
