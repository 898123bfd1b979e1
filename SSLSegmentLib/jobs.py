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

This module is generic: it imports neither ``slicer`` nor ``qt``.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from .config import PROVISIONAL_ITERATIONS
from .config import DEFAULT_METHOD
from .fileio import atomic_write_json, file_sha256
from .training.run_folder import read_run_status

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
TERMINAL_STATES = (DONE, FAILED, CANCELLED)

#: Seconds a cancelled child gets to stop cleanly before its process tree is killed.
CANCEL_GRACE_S = 5.0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; ``default`` when it is missing or half-written (never raises)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


# --------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------


class JobFolder:
    """Paths and bookkeeping files of one job folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def labels_dir(self, round_number: int) -> Path:
        return self.root / "labels" / f"{round_number:03d}"

    def round_dir(self, round_number: int) -> Path:
        return self.root / "rounds" / f"{round_number:03d}"

    def rounds(self) -> list[int]:
        """Round numbers that exist, ascending."""
        rounds_dir = self.root / "rounds"
        if not rounds_dir.is_dir():
            return []
        return sorted(int(p.name) for p in rounds_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def next_round(self) -> int:
        existing = self.rounds()
        return existing[-1] + 1 if existing else 1

    def read_job(self) -> dict:
        return read_json(self.job_file, default={"classes": [], "cases": {}})

    def write_job(self, job: dict) -> None:
        atomic_write_json(self.job_file, job)

    def read_round(self, round_number: int) -> dict:
        return read_json(self.round_dir(round_number) / "round.json", default={})

    def write_round(self, round_number: int, info: dict) -> None:
        atomic_write_json(self.round_dir(round_number) / "round.json", info)

    def history(self) -> list[dict]:
        """One summary per round: state, previous round, label set size, last metrics."""
        return [round_summary(self.round_dir(n), self.read_round(n)) for n in self.rounds()]


def case_manifest(folder: JobFolder, cases: dict[str, dict]) -> dict[str, dict]:
    """Add SHA-256 checksums of each case's image and label files (paths relative to the job)."""
    manifest = {}
    for name, case in cases.items():
        entry = dict(case)
        for key in ("image", "label"):
            if entry.get(key):
                entry[key + "Sha256"] = file_sha256(folder.root / entry[key])
        manifest[name] = entry
    return manifest


def round_summary(run_dir: Path, info: dict) -> dict:
    """What the history view shows for one round."""
    status = read_run_status(run_dir) or {}  # "interrupted" when its process is gone
    records = ProgressReader(run_dir / "progress.jsonl").read_new()
    dice = [r["val_dice"] for r in records if r.get("val_dice") is not None]
    steps = [r for r in records if "iteration" in r]
    cases = info.get("cases", {})
    return {
        "round": info.get("round"),
        "previousRound": info.get("previousRound"),
        "state": status.get("state", "unknown"),
        "started": info.get("started"),
        "labelled": sorted(n for n, c in cases.items() if c.get("label")),
        "corrected": sorted(n for n, c in cases.items() if c.get("corrected")),
        "settings": info.get("settings", {}),
        "iterations": steps[-1]["iteration"] if steps else 0,
        "valDice": dice[-1] if dice else None,
        "bestValDice": status.get("best_val_dice"),
        "model": str(run_dir / "model.pt") if (run_dir / "model.pt").exists() else None,
    }


# --------------------------------------------------------------------------------------
# The engine command
# --------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """What the child trains with; the names are the CLI's (``sslsegment train``)."""

    method: str = DEFAULT_METHOD
    network: str = "unet"
    dim: str = "auto"
    iterations: int = 2000
    device: str = "auto"
    seed: int = 1337
    size: str | None = None
    preset: str | None = None
    time_budget: float | None = None
    """Minutes for the whole round (``--time-budget``); it then replaces ``iterations``."""
    spacing: str | None = None
    """Training spacing (``--spacing``: "data", "fit", mm); None: the preset's."""
    extra_args: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def train_command(python: Sequence[str], folder: JobFolder, round_number: int,
                  settings: TrainSettings, init_model: Path | None = None) -> list[str]:
    """The ``python -m SSLSegmentLib train ...`` command line of one round."""
    command = [*python, "-m", "SSLSegmentLib", "train",
               "--images", str(folder.images_dir),
               "--labels", str(folder.labels_dir(round_number)),
               "--method", settings.method, "--network", settings.network,
               "--dim", str(settings.dim), *_length_arguments(settings),
               "--out", str(folder.round_dir(round_number)),
               "--device", settings.device, "--seed", str(int(settings.seed)),
               "--predict-unlabelled"]
    if settings.preset:
        command += ["--preset", settings.preset]
    if settings.size:
        command += ["--size", settings.size]
    if settings.spacing:
        command += ["--spacing", str(settings.spacing)]
    if init_model is not None:
        command += ["--init-model", str(init_model)]
    command += ["--threads", str(child_threads())]
    return command + list(settings.extra_args)


def _length_arguments(settings: TrainSettings) -> list[str]:
    """``--time-budget`` when the round trains for a time (the budget fixes the iterations),
    else ``--iterations``."""
    if settings.time_budget:
        return ["--time-budget", str(float(settings.time_budget))]
    return ["--iterations", str(int(settings.iterations))]


def child_threads() -> int:
    """CPU threads for the training child: every core but one, which stays with Slicer's
    GUI. Torch's default (one per core) stalls when a core is busy: each step waits for
    the thread that is not running."""
    return max(1, (os.cpu_count() or 2) - 1)


def child_environment(package_parent: str | os.PathLike, device: str = "auto") -> dict[str, str]:
    """Environment of the child: finds ``SSLSegmentLib``; no GPU when the CPU is asked for."""
    env = dict(os.environ)
    paths = [str(package_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"  # the log tail must be current when the child crashes
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


class ProcessHandle(Protocol):
    pid: int

    def poll(self) -> int | None: ...


class ProcessRunner(Protocol):
    """Starts a child process; injected into :class:`Job` so tests can replace it."""

    def __call__(self, command: list[str], cwd: Path, env: dict[str, str],
                 console_path: Path) -> ProcessHandle: ...


def start_process(command: list[str], cwd: Path, env: dict[str, str], console_path: Path) -> subprocess.Popen:
    """Start ``command`` in its own process group, stdout and stderr into ``console_path``.

    Its own group/session so that a kill reaches the child's children (data loader
    workers) and so that Ctrl+C in Slicer's terminal does not reach it.
    """
    console_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True
    with open(console_path, "ab") as console:
        return subprocess.Popen(command, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                stdout=console, stderr=subprocess.STDOUT, **kwargs)


def kill_process_tree(pid: int, timeout_s: float = 3.0) -> None:
    """Terminate a process and all its descendants; kill whatever is left after ``timeout_s``."""
    import psutil  # here: Slicer installs it with the other requirements, on first use

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    try:
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        processes = [parent]
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    kill_process_group(pid)


def kill_process_group(pgid: int) -> None:
    """Kill what is left of the child's process group (POSIX).

    Workers whose launcher already exited are no longer its children for psutil, but they
    are still in the group that :func:`start_process` created.
    """
    if sys.platform == "win32" or not hasattr(os, "killpg"):
        return
    try:
        if os.getpgid(pgid) != pgid:
            return  # the group leader's pid was reused: not our group
    except ProcessLookupError:
        pass  # leader gone; its group may still have members
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ProgressReader:
    """Reads the records appended to ``progress.jsonl`` since the last call.

    Only whole lines are parsed, so a record being written is picked up next time.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        records = []
        for line in data[: end + 1].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a corrupt line must not stop the progress display
        return records


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' when missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


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
        self._reader = ProgressReader(self.run_dir / "progress.jsonl")
        self._listeners: list[Callable[["Job"], None]] = []

    @classmethod
    def from_past_round(cls, folder: JobFolder, round_number: int) -> "Job":
        """A job for a round that ran earlier (no process): its state from status.json.

        A round whose process is gone without a final status counts as failed.
        """
        job = cls(folder, round_number, folder.read_round(round_number).get("command", []))
        job._take(job._reader.read_new())
        status = read_run_status(job.run_dir) or {}
        state = status.get("state")
        if state in TERMINAL_STATES:
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
        return self.run_dir / "model.pt"

    @property
    def predictions_dir(self) -> Path:
        return self.run_dir / "predictions"

    @property
    def console_path(self) -> Path:
        return self.run_dir / "console.txt"

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

    def add_listener(self, callback: Callable[["Job"], None]) -> None:
        """``callback(job)`` is called once when the job reaches a final state."""
        self._listeners.append(callback)

    def poll(self) -> str:
        """Read new progress, notice the end of the process; kill it when a cancel timed out."""
        if self._state in TERMINAL_STATES:
            return self._state
        self._take(self._reader.read_new())
        returncode = self.process.poll() if self.process is not None else None
        if returncode is None:
            if self._cancel_deadline is not None and time.monotonic() >= self._cancel_deadline:
                self.kill()
            return self._state
        if hasattr(self.process, "args"):  # a real process (Popen): no worker may outlive it
            kill_process_group(self.process.pid)
        self._finish(*self._outcome(returncode))
        return self._state

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
        self._take(self._reader.read_new())
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
        for callback in self._listeners:
            callback(self)

    def cancel(self, grace_s: float | None = None) -> None:
        """Ask the child to stop (``cancel`` file); its tree is killed if still alive after ``grace_s``.

        Never blocks: the kill happens in a later :meth:`poll` (or :meth:`wait`).
        """
        if self._state in TERMINAL_STATES:
            return
        try:
            (self.run_dir / "cancel").write_text(now_iso(), encoding="utf-8")
        except OSError:
            pass  # the kill below still stops it
        grace = self.cancel_grace_s if grace_s is None else grace_s
        self._cancel_deadline = time.monotonic() + grace
        self.poll()

    def kill(self) -> None:
        """Kill the child's whole process tree now (scene closed, application exit)."""
        if self._cancel_deadline is None:
            self._cancel_deadline = time.monotonic()
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
        return tail(self.run_dir / "log.txt", lines) or tail(self.console_path, lines)

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


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def status_text(job: Job) -> str:
    """One line for the GUI: round, iteration, ETA, loss and validation Dice (or the phase)."""
    state = job.poll()
    if state != RUNNING:
        return f"Round {job.round}: {state}" + (f" - {job.error}" if job.error else "")
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
