"""The run-folder protocol is written once (``SSLSegmentLib.run_protocol``) and every reader
the product uses follows its rule: whole lines only, a corrupt line skipped and counted."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from SSLSegmentLib import job_folder, jobs, predict_status, run_protocol
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.run_protocol import ProgressReader, read_progress
from SSLSegmentLib.training.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
CORRUPT = '{"iteration": 1, "total": 3}\n{"iteration": 2, "tot\x00\n[1, 2]\n\n{"iteration": 3, "total": 3, "val_dice": 0.5}\n'
"""A torn record and a non-object in the middle; the records after them must still be read."""


def _run_with_corrupt_progress(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / run_protocol.PROGRESS_FILE).write_text(CORRUPT, encoding="utf-8")
    run_protocol.write_status(folder, run_protocol.DONE, best_val_dice=0.5)
    return folder


def test_every_reader_skips_a_corrupt_line_in_the_middle(tmp_path):
    run = _run_with_corrupt_progress(tmp_path / "job" / "rounds" / "001")
    expected = [1, 3]
    reader = ProgressReader(run / run_protocol.PROGRESS_FILE)
    assert [r["iteration"] for r in reader.read_new()] == expected
    assert reader.skipped == 2  # the torn record and the list; the blank line is no record
    assert [r["iteration"] for r in read_progress(run)] == expected
    assert [r["iteration"] for r in RunFolder(run).read_progress()] == expected  # tests and benches
    assert jobs.ProgressReader is ProgressReader  # the panel's and the web UI's Job
    job = jobs.Job.from_past_round(jobs.JobFolder(tmp_path / "job"), 1)
    assert [r["iteration"] for r in job.history] == expected and job.state == jobs.DONE
    assert job.latest_val_dice() == 0.5
    summary = job_folder.round_summary(run, {"round": 1})  # the history view
    assert summary["iterations"] == 3 and summary["valDice"] == 0.5 and summary["state"] == "done"


def test_a_partial_last_line_is_read_once_it_is_complete(tmp_path):
    path = tmp_path / run_protocol.PROGRESS_FILE
    path.write_text('{"iteration": 1}\n{"iteration": 2', encoding="utf-8")
    reader = ProgressReader(path)
    assert reader.read_new() == [{"iteration": 1}]
    assert RunFolder(tmp_path).read_progress() == [{"iteration": 1}]  # never half a record
    assert reader.read_new() == []
    with open(path, "a", encoding="utf-8") as f:
        f.write(', "total": 2}\n')
    assert reader.read_new() == [{"iteration": 2, "total": 2}]
    assert reader.read_new() == [] and reader.skipped == 0
    run_protocol.append_progress(tmp_path, {"iteration": 3})
    assert reader.read_new() == [{"iteration": 3}]


def test_a_progress_file_started_again_is_read_from_its_start(tmp_path):
    """A run started again in the same folder (``--overwrite``) replaces or truncates the file;
    the watcher must show the new run's records, not wait for the old offset or read from the
    middle of a line."""
    path = tmp_path / run_protocol.PROGRESS_FILE
    path.write_text("".join(json.dumps({"iteration": i}) + "\n" for i in range(1, 6)), encoding="utf-8")
    reader = ProgressReader(path)
    assert len(reader.read_new()) == 5
    path.write_text('{"iteration": 1, "run": 2}\n', encoding="utf-8")  # truncated in place, shorter
    assert reader.read_new() == [{"iteration": 1, "run": 2}] and reader.restarts == 1
    replacement = tmp_path / "new.jsonl"  # replaced by rename, as long as what was read
    replacement.write_text("".join(json.dumps({"iteration": i, "run": 3}) + "\n" for i in range(1, 4)), encoding="utf-8")
    replacement.replace(path)
    assert [r["run"] for r in reader.read_new()] == [3, 3, 3]
    assert reader.restarts == 2 and reader.skipped == 0
    run_protocol.append_progress(tmp_path, {"iteration": 4, "run": 3})
    assert reader.read_new() == [{"iteration": 4, "run": 3}] and reader.restarts == 2


def test_status_is_written_atomically_and_read_with_interrupted(tmp_path):
    with pytest.raises(ValueError, match="not a run state"):
        run_protocol.write_status(tmp_path, "finished")
    assert run_protocol.read_status(tmp_path) is None
    (tmp_path / run_protocol.STATUS_FILE).write_text('["running"]', encoding="utf-8")
    assert run_protocol.read_run_status(tmp_path) is None  # not an object: no status
    run_protocol.write_status(tmp_path, run_protocol.RUNNING)
    assert run_protocol.read_run_status(tmp_path)["state"] == run_protocol.RUNNING  # this process is alive
    status = json.loads((tmp_path / run_protocol.STATUS_FILE).read_text())
    (tmp_path / run_protocol.STATUS_FILE).write_text(json.dumps({**status, "pid": 2**22 + 12345}))
    interrupted = run_protocol.read_run_status(tmp_path)
    assert interrupted["state"] == run_protocol.INTERRUPTED and "--resume" in interrupted["error"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_states_and_exit_codes_come_from_the_protocol():
    for name in ("RUNNING", "DONE", "FAILED", "CANCELLED", "TERMINAL_STATES"):
        assert getattr(jobs, name) is getattr(run_protocol, name)
    assert not any(hasattr(job_folder, name) for name in ("RUNNING", "DONE", "FAILED", "CANCELLED"))
    assert predict_status.EXIT_CANCELLED is run_protocol.EXIT_CANCELLED
    from SSLSegmentLib import cli  # noqa: PLC0415

    assert (cli.EXIT_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_CANCELLED) == (1, 2, 3)
    assert run_protocol.TERMINAL_STATES == tuple(s for s in run_protocol.STATES if s != run_protocol.RUNNING)


def _protocol_literals(path: Path) -> list[str]:
    """String constants of ``path`` that spell a run-folder file name, and state strings used
    as states (compared, assigned, passed to ``set_status``); docstrings and messages aside."""
    names = {run_protocol.CONFIG_FILE, run_protocol.STATUS_FILE, run_protocol.PROGRESS_FILE, run_protocol.LOG_FILE,
             run_protocol.MODEL_FILE, run_protocol.CASES_FILE, run_protocol.COMMAND_FILE, run_protocol.BUDGET_FILE,
             run_protocol.LOCK_FILE}
    states = {*run_protocol.STATES, run_protocol.INTERRUPTED}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
        constants = []
        if isinstance(node, ast.Compare):
            constants = [node.left, *node.comparators]
        elif isinstance(node, ast.Assign):
            constants = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("set_status", "write_status"):
            constants = node.args[:1]
        found += [f"{path.name}:{c.lineno} {c.value!r}" for c in constants
                  if isinstance(c, ast.Constant) and c.value in states]
    return found


def test_no_module_repeats_the_protocol_names_or_states():
    sources = sorted((ROOT / "SSLSegmentLib").rglob("*.py"))
    assert len(sources) > 40
    repeated = [hit for path in sources if path.name != "run_protocol.py" for hit in _protocol_literals(path)]
    assert repeated == []
    assert _protocol_literals(ROOT / "SSLSegmentLib" / "run_protocol.py")  # the check sees them where they are


def test_the_lifecycle_records_a_failure_before_raising_it(tmp_path):
    from SSLSegmentLib.training.lifecycle import train_run  # noqa: PLC0415
    from SSLSegmentLib.training.trainer import Cancelled  # noqa: PLC0415

    def bad_inputs():
        raise InputError("case 'alpha': no label")

    run = RunFolder(tmp_path / "bad")
    with pytest.raises(InputError, match="alpha"):
        train_run(run, bad_inputs)
    status = run.read_status()
    assert status["state"] == run_protocol.FAILED and status["error"] == "case 'alpha': no label"
    assert "case 'alpha': no label" in run.log.read_text()

    def cancelled():
        raise Cancelled()

    run = RunFolder(tmp_path / "cancelled")
    with pytest.raises(Cancelled):
        train_run(run, cancelled)
    assert run.read_status()["state"] == run_protocol.CANCELLED
