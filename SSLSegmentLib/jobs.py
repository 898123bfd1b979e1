"""The job folder: training rounds run as child processes, their files and their history.

A *job* is one folder holding everything a Slicer session (or a script) trained::

    JOB/
      job.json                  classes (names, colours) and cases (name, volume, role)
      images/<case>.nrrd        every volume of the job, exported once
      labels/NNN/<case>.seg.nrrd  the label set round NNN trained on (manual + corrected)
      rounds/NNN/               the engine's run folder (``--out``) for round NNN:
        round.json              written by the parent BEFORE the start: settings, command,
                                previous round, cases and labels with SHA-256 checksums
        console.txt             the child's stdout and stderr
        config.json progress.jsonl status.json log.txt model.pt predictions/ ...  (engine)
        cancel                  written by the parent to ask the child to stop cleanly

Each round keeps its own label set, model, settings and metrics, so the history can be
shown and any round can be gone back to. The child writes only inside its round folder;
the parent only reads it (apart from ``round.json`` before the start and ``cancel``).

Pattern from SlicerMONAIAuto3DSeg and MONAI Label: the work runs in a separate process
that the GUI polls; cancelling kills the whole process tree (psutil), not just the
launcher. The process runner is injected (SlicerNNUnet style) so tests can use a dummy.

This module holds the round's command line and :class:`Job` (the round's settings are
:class:`.round_settings.TrainSettings`, a view on ``TrainConfig``); the folder's files
are in :mod:`.job_folder`, the process handling in :mod:`.child_process`, the progress reading
in :mod:`.run_protocol` and :mod:`.job_progress` (their names are re-exported here). Generic: it imports neither
``slicer`` nor ``qt``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .config import PROVISIONAL_ITERATIONS
from .child_process import (  # noqa: F401  (re-exported: jobs is the module the logic and the panel use)
    ProcessHandle, ProcessRunner, child_environment, child_threads, kill_process_group, kill_process_tree,
    start_process,
)
from .job_folder import (  # noqa: F401  (re-exported)
    CANCEL_GRACE_S, JobFolder, case_manifest, now_iso, read_json, round_summary,
)
from .fileio import atomic_write_json, file_sha256  # noqa: F401  (re-exported)
from .job_progress import format_duration, tail  # noqa: F401  (re-exported)
from .round_settings import TrainSettings  # noqa: F401  (re-exported: the round's settings)
from .run_protocol import (  # noqa: F401  (the states and the reader: re-exported for the panel and the web UI)
    CANCELLED, DONE, FAILED, INTERRUPTED, LOG_FILE, MODEL_FILE, PREDICTIONS_DIR, PROGRESS_FILE,
    RESUME_CHECKPOINT, RUNNING, TERMINAL_STATES, ProgressReader, checkpoint_name, current_warnings,
    read_run_status, request_cancel,
)


# --------------------------------------------------------------------------------------
# The engine command
# --------------------------------------------------------------------------------------


def train_command(python: Sequence[str], folder: JobFolder, round_number: int,
                  settings: TrainSettings, init_model: Path | None = None) -> list[str]:
    """The ``python -m SSLSegmentLib train ...`` command line of one round."""
    command = [*python, "-m", "SSLSegmentLib", "train",
               "--images", str(folder.images_dir),
               "--labels", str(folder.labels_dir(round_number)),
               "--out", str(folder.round_dir(round_number)),
               "--predict-unlabelled"]
    if init_model is not None:
        command += ["--init-model", str(init_model)]
    command += ["--threads", str(child_threads())]
    return command + settings.to_argv()


def resume_command(python: Sequence[str], folder: JobFolder, round_number: int) -> list[str]:
    """``train --resume`` of a round that stopped before its end: the engine goes on with
    the round's own settings (its ``command.json``), from its last checkpoint or, when the
    training was over, with the prediction of the unlabelled cases."""
    return [*python, "-m", "SSLSegmentLib", "train", "--resume", str(folder.round_dir(round_number)),
            "--threads", str(child_threads())]


class RunningElsewhere:
    """The handle of a round's training process that this session did not start: running
    while it holds its run folder (``read_run_status``); then exit code 0 when it ended done,
    1 otherwise (the status says how). ``pid`` lets Cancel stop its process tree."""

    def __init__(self, run_dir: Path, pid: int | None):
        self.run_dir = run_dir
        self.pid = pid if isinstance(pid, int) else -1

    def poll(self) -> int | None:
        state = (read_run_status(self.run_dir) or {}).get("state")
        if state == RUNNING:
            return None
        return 0 if state == DONE else 1


class Job:
    """One training round running (or run) as a child process.

    ``state`` (running / done / failed / cancelled), ``progress`` (the latest progress
    record), ``history`` (all of them) and ``error`` are refreshed by :meth:`poll`, which
    never blocks; reading ``state`` polls. ``wait()`` blocks (tests, scripts).
    """

    def __init__(self, folder: JobFolder, round_number: int, command: list[str],
                 env: dict[str, str] | None = None, runner: ProcessRunner = start_process,
                 cancel_grace_s: float = CANCEL_GRACE_S):
        self.folder = folder
        self.round = round_number
        self.command = list(command)
        self.env = env if env is not None else dict(os.environ)
        self.runner = runner
        self.cancel_grace_s = cancel_grace_s
        self.progress: dict | None = None
        """The latest progress record: a training step, or a phase such as ``predicting``."""
        self.history: list[dict] = []
        self.training_progress: dict | None = None
        """The latest training-step record (``iteration``, ``total``, ``losses``, ``val_dice``...)."""
        self.error: str | None = None
        self.process: ProcessHandle | None = None
        self.started_at: float | None = None
        self._state = RUNNING
        self._cancel_deadline: float | None = None
        self._reader = ProgressReader(self.run_dir / PROGRESS_FILE)

    @classmethod
    def from_past_round(cls, folder: JobFolder, round_number: int) -> "Job":
        """A job for a round that ran earlier: its state from status.json.

        A round whose process is gone without a final status counts as failed. A round whose
        process is still training (it outlived the Slicer session or the server that started
        it) is running: the job watches it to its end, and Cancel stops it.
        """
        job = cls(folder, round_number, folder.read_round(round_number).get("command", []))
        job._read_progress()
        status = read_run_status(job.run_dir) or {}
        state = status.get("state")
        if state == RUNNING:
            job.process, job.started_at = RunningElsewhere(job.run_dir, status.get("pid")), time.monotonic()
        elif state in TERMINAL_STATES:
            job._finish(state, status.get("error") if state == FAILED else None)
        else:  # interrupted (killed), or never started
            job._finish(FAILED, status.get("error") or "the training process of this round ended without a final "
                                                       "status")
        return job

    # -- paths ---------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.folder.round_dir(self.round)

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE

    @property
    def predictions_dir(self) -> Path:
        return self.run_dir / PREDICTIONS_DIR

    @property
    def console_path(self) -> Path:
        return self.run_dir / "console.txt"

    @property
    def resumable(self) -> bool:
        """Whether ``train --resume`` can go on with this finished round: it was interrupted
        (killed, Slicer closed, the machine restarted) or cancelled and left a resumable
        checkpoint or its model, or it failed after its training (while predicting). A round
        that failed before its model would fail the same way again."""
        if self.poll() not in (FAILED, CANCELLED):
            return False
        state = (read_run_status(self.run_dir) or {}).get("state")
        if state in (RUNNING, DONE):  # RUNNING: a live process holds the folder (another session)
            return False
        if self.model_path.is_file():
            return True
        return state in (INTERRUPTED, CANCELLED) and (self.run_dir / checkpoint_name(RESUME_CHECKPOINT)).is_file()

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> "Job":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        try:
            self.process = self.runner(self.command, self.folder.root, self.env, self.console_path)
        except OSError as error:  # e.g. the interpreter is missing
            self._finish(FAILED, f"could not start the training process: {error}")
        return self

    @property
    def state(self) -> str:
        return self.poll()

    @property
    def finished(self) -> bool:
        return self.poll() in TERMINAL_STATES

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_deadline is not None

    def poll(self) -> str:
        """Read new progress, notice the end of the process; kill it when a cancel timed out."""
        if self._state in TERMINAL_STATES:
            return self._state
        self._read_progress()
        returncode = self.process.poll() if self.process is not None else None
        if returncode is None:
            if self._cancel_deadline is not None and time.monotonic() >= self._cancel_deadline:
                self.kill()
            return self._state
        if hasattr(self.process, "args"):  # a real process (Popen): no worker may outlive it
            kill_process_group(self.process.pid)
        self._finish(*self._outcome(returncode))
        return self._state

    def _read_progress(self) -> None:
        """The records written since the last read; a progress file started again from the
        beginning (a run overwritten in the same folder) replaces the history."""
        restarts = self._reader.restarts
        records = self._reader.read_new()
        if self._reader.restarts != restarts:
            self.history.clear()
        self._take(records)

    def _take(self, records: list[dict]) -> None:
        if not records:
            return
        self.history.extend(records)
        self.progress = records[-1]
        steps = [r for r in records if "iteration" in r]
        if steps:
            self.training_progress = steps[-1]

    def _outcome(self, returncode: int) -> tuple[str, str | None]:
        """Final state from the child's status.json and exit code."""
        # The last records may have been written between the read above and the exit.
        self._read_progress()
        status = read_run_status(self.run_dir) or {}  # a killed child: interrupted, with how to resume
        if status.get("state") == DONE and returncode == 0:
            return DONE, None
        if self.cancel_requested:
            return CANCELLED, None
        if status.get("state") == CANCELLED:
            return CANCELLED, None
        message = status.get("error") or f"the training process ended with exit code {returncode}"
        if status.get("state") == DONE:
            message = f"the training process reported done but exited with code {returncode}"
        return FAILED, message

    def _finish(self, state: str, error: str | None) -> None:
        self._state = state
        self.error = error

    def cancel(self, grace_s: float | None = None) -> None:
        """Ask the child to stop (``cancel`` file); its tree is killed if still alive after ``grace_s``.

        Never blocks: the kill happens in a later :meth:`poll` (or :meth:`wait`).
        """
        if self._state in TERMINAL_STATES:
            return
        try:
            request_cancel(self.run_dir)
        except OSError:
            pass  # the kill below still stops it
        grace = self.cancel_grace_s if grace_s is None else grace_s
        self._cancel_deadline = time.monotonic() + grace
        self.poll()

    def kill(self) -> None:
        """Kill the child's whole process tree now (scene closed, application exit)."""
        if self._cancel_deadline is None:
            self._cancel_deadline = time.monotonic()
        if isinstance(self.process, RunningElsewhere) and (self.process.pid <= 0 or self.process.poll() is not None):
            return  # it ended (its pid may be another process's by now), or its status named none
        if self.process is not None:
            kill_process_tree(self.process.pid)
            if isinstance(self.process, subprocess.Popen):
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.2) -> str:
        """Block until the job ends (or ``timeout_s`` passes); returns the state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.poll() not in TERMINAL_STATES:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval_s)
        return self._state

    # -- what the GUI shows --------------------------------------------------------------
    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the engine's log, or of the console when the log is empty."""
        return tail(self.run_dir / LOG_FILE, lines) or tail(self.console_path, lines)

    @property
    def phase(self) -> str:
        """``training``, or the phase the engine reports after it (e.g. ``predicting``)."""
        return (self.progress or {}).get("phase", "training")

    def eta_s(self) -> float | None:
        return (self.training_progress or {}).get("eta_s") if self.phase == "training" else None

    def fraction_done(self) -> float:
        """0..1 for a progress bar: training counts for 90 %, what follows it for 10 %."""
        if self._state == DONE:
            return 1.0
        step = self.training_progress or {}
        training = min(1.0, step.get("iteration", 0) / step["total"]) if step.get("total") else 0.0
        if self.phase == "training":
            return 0.9 * training
        after = self.progress or {}
        return 0.9 + 0.1 * (min(1.0, after.get("done", 0) / after["total"]) if after.get("total") else 0.0)

    def latest_val_dice(self) -> float | None:
        """The last validation Dice the engine measured (None before the first)."""
        for record in reversed(self.history):
            if record.get("val_dice") is not None:
                return record["val_dice"]
        return None

    def warnings(self) -> list[str]:
        """What the engine warns about (a run too short for its method) as it stands now, in order."""
        return current_warnings(self.history)


def status_text(job: Job) -> str:
    """One line for the GUI: round, iteration, ETA, loss and validation Dice (or the phase)."""
    state = job.poll()
    if state != RUNNING:
        warnings = job.warnings()
        return (f"Round {job.round}: {state}" + (f" - {job.error}" if job.error else "")
                + (f" - warning: {warnings[0]}" if warnings and not job.error else ""))
    if job.cancel_requested:
        return f"Round {job.round}: cancelling..."
    if job.phase != "training":
        progress = job.progress or {}
        return f"Round {job.round}: {job.phase} {progress.get('case', '')} ({progress.get('done', 0)}/{progress.get('total', '?')})"
    step = job.training_progress
    if not step:
        return f"Round {job.round}: starting (preparing the data)..."
    if step.get("total", 0) >= PROVISIONAL_ITERATIONS:
        return f"Round {job.round}: iteration {step.get('iteration')}, measuring the speed for the time budget..."
    parts = [f"Round {job.round}: iteration {step.get('iteration')}/{step.get('total')}",
             f"ETA {format_duration(step.get('eta_s'))}"]
    losses = step.get("losses") or {}
    if losses:
        main = losses.get("main", losses.get("loss", next(iter(losses.values()))))
        parts.append(f"loss {main:.4f}")
    dice = job.latest_val_dice()
    if dice is not None:
        parts.append(f"val Dice {dice:.3f}")
    return ", ".join(parts)


def past_rounds(root: str | os.PathLike, limit: int = 20) -> list[dict]:
    """The latest round of each job folder under ``root``, newest job first: what a session
    started after a restart (of Slicer, of the browser UI's server) can open again.

    Each: ``folder``, ``name``, ``round``, ``method``, ``state`` (``interrupted`` when its
    process is gone without a final status), ``started``, ``cases`` and ``resumable``.
    Folders without a round (or not jobs at all) are left out. Only the ``limit`` most
    recently used jobs (their ``job.json`` written last) are read, however many there are."""
    root = Path(root)
    folders = [JobFolder(p) for p in root.iterdir() if (p / "job.json").is_file()] if root.is_dir() else []
    folders.sort(key=lambda f: f.job_file.stat().st_mtime, reverse=True)
    listed = []
    for folder in folders:
        rounds = folder.rounds()
        if not rounds:
            continue
        if len(listed) == limit:
            break
        info = folder.read_round(rounds[-1])
        status = read_run_status(folder.round_dir(rounds[-1])) or {}  # "interrupted": its process is gone
        listed.append({"folder": str(folder.root), "name": folder.root.name, "round": rounds[-1],
                       "method": info.get("settings", {}).get("method"), "state": status.get("state", "unknown"),
                       "started": info.get("started") or "", "cases": len(folder.read_job().get("cases", {})),
                       "resumable": Job.from_past_round(folder, rounds[-1]).resumable})
    listed.sort(key=lambda r: (r["started"], r["name"]), reverse=True)
    return listed
