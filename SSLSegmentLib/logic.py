"""SSLSegmentLogic: an MRML scene <-> the training engine, through a job folder.

Used by the Slicer module (``slicer.mrmlScene``) and, unchanged, outside Slicer on a
scene from :func:`SSLSegmentLib.headless.slicer_scene` (tests, servers). Imports
``slicer`` (MRML), never ``qt``, ``ctk`` or the widget.

The user's work is safe by construction:

- nothing in the scene is modified to train: volumes and labels are *exported* (temporary
  nodes are removed again);
- predictions go to new segmentation nodes, and become training data only when the user
  passes them as ``corrected`` to :meth:`SSLSegmentLogic.retrain`;
- every round keeps its label set, model, settings and metrics in the job folder
  (see :mod:`SSLSegmentLib.jobs`).

This module holds the rounds (start, retrain, open a job); the other responsibilities are
mixins in :mod:`SSLSegmentLib.slicer_logic` (input checks, export, results, node markings),
and their names are re-exported here.

Patterns from SlicerMONAIAuto3DSeg (child process, results as named segments under the
volume in the subject hierarchy), SlicerNNUnet (the process runner injected into the logic)
and MONAI Label (only labels approved by a person train).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

import slicer

from . import jobs
from .data.class_names import check_classes_in_every_case, check_every_class_drawn
from .errors import InputError
from .segmenting import SegmentingMixin
from .mrml import (  # noqa: F401  (re-exported for the module and scripts)
    writeVolume,
    readVolume,
    readSegmentation,
    resampleToVolume,
    referenceVolume,
    geometryMismatch,
    unplaceableWithoutReference,
    placeUnder,
    segments,
    segmentNames,
    requireLabelledVoxels,
    nodesByClass,
)
from .slicer_logic.export import LABELMAP_SUFFIXES, ExportMixin  # noqa: F401  (re-exported)
from .slicer_logic.inputs import InputChecksMixin
from .slicer_logic.markings import (  # noqa: F401  (re-exported for the module, the web UI and tests)
    ATTR_CASE, ATTR_CONFIDENCE, ATTR_CORRECTED, ATTR_JOB, ATTR_OUT_OF_DOMAIN, ATTR_ROLE, ATTR_ROUND, EXCLUDED,
    LABELLED, UNLABELLED, MarkingsMixin,
)
from .round_settings import TrainSettings, settings_changes, settings_from_round
from .slicer_logic.results import ResultsMixin

log = logging.getLogger(__name__)

EXPORT_FORMAT_CHOICES = ("seg.nrrd", "nrrd", "nii.gz")


class SSLSegmentLogic(SegmentingMixin, InputChecksMixin, ExportMixin, ResultsMixin, MarkingsMixin):
    """Train, predict, retrain and export from an MRML scene; segment new scans
    (:class:`SSLSegmentLib.segmenting.SegmentingMixin`).

    Parameters
    ----------
    scene:
        The MRML scene (``slicer.mrmlScene`` inside Slicer).
    jobsRoot:
        Folder under which each training job gets its folder.
    pythonCommand:
        The interpreter (and options) that runs the engine; default :func:`enginePython`.
    processRunner:
        Starts the child process (see :class:`SSLSegmentLib.jobs.ProcessRunner`).
    """

    def __init__(self, scene=None, jobsRoot: str | os.PathLike | None = None,
                 pythonCommand: Sequence[str] | None = None,
                 processRunner: jobs.ProcessRunner = jobs.start_process):
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.jobsRoot = Path(jobsRoot) if jobsRoot else defaultJobsRoot()
        self.pythonCommand = list(pythonCommand) if pythonCommand else enginePython()
        self.processRunner = processRunner
        self.jobs: list[jobs.Job] = []
        # A closed scene must not leave a training process behind.
        self._closeObserver = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose)

    def cleanup(self) -> None:
        """Stop running jobs and observing the scene (module unloaded, application exit)."""
        self.stopAllJobs()
        if self._closeObserver is not None:
            self.scene.RemoveObserver(self._closeObserver)
            self._closeObserver = None

    def _onSceneClose(self, caller=None, event=None) -> None:
        self.stopAllJobs()

    def stopAllJobs(self) -> None:
        """Kill the process tree of every running job (their rounds end as cancelled)."""
        for job in self.jobs:
            if not job.finished:
                job.cancel(grace_s=0)
                job.kill()
                job.poll()

    # ----------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------

    def startTraining(self, labeled: Sequence[tuple], unlabeled: Sequence = (),
                      jobFolder: str | os.PathLike | None = None, waitForCompletion: bool = False,
                      **settings) -> jobs.Job:
        """Export the cases to a new job folder and start round 1 in a child process.

        ``labeled``: ``[(volumeNode, segmentationNode), ...]``; ``unlabeled``: volume nodes.
        Classes are the segment names (union, in order of first appearance). Bad input
        raises :class:`InputError` before any process starts. Returns the running job
        (finished when ``waitForCompletion``).

        ``settings``: the round's training settings, by the names of
        :class:`SSLSegmentLib.round_settings.TrainSettings` (``method``, ``network``, ``dim``,
        ``iterations``, ``device``, ``seed``, ``size``, ``preset``, ``time_budget`` or
        ``timeBudget``: train for this many minutes, prediction included, instead of
        ``iterations``; ``spacing``: "data", "fit" or mm, see ``SSLSegmentLib.spacing``;
        ``extra_args`` or ``extraArgs``: more ``sslsegment train`` arguments). Each one left out
        takes ``TrainConfig``'s default; an unknown name is refused.
        """
        labeled, unlabeled = list(labeled), list(unlabeled)
        self.validateInputs(labeled, unlabeled)
        classes = self.classesFromSegmentations([seg for _, seg in labeled])
        check_classes_in_every_case(_segmentNamesPerVolume(labeled))
        settings = _roundSettings({}, settings)
        folder = jobs.JobFolder(jobFolder or self._newJobFolder(settings.method))
        if folder.job_file.exists():
            raise InputError(f"job folder {folder.root} is already used by another job")
        _checkSettings(folder, settings)
        names = uniqueCaseNames([volume for volume, _ in labeled] + unlabeled)
        round_number = 1
        cases = {}
        with _removedOnError(folder.root):  # refused input leaves no half-made job behind
            for (volume, segmentation), name in zip(labeled, names):
                cases[name] = self._exportCase(folder, round_number, name, volume, segmentation, classes)
            for volume, name in zip(unlabeled, names[len(labeled):]):
                cases[name] = self._exportCase(folder, round_number, name, volume, None, classes)
            check_every_class_drawn([c["name"] for c in classes],
                                    [folder.root / c["label"] for c in cases.values() if c.get("label")])
            folder.write_job({"version": 1, "created": jobs.now_iso(), "classes": classes,
                              "cases": {name: _jobCaseEntry(case) for name, case in cases.items()}})
        return self._startRound(folder, round_number, cases, settings, None, waitForCompletion)

    def retrain(self, job: jobs.Job, corrected: Sequence[tuple] = (), iterations: int | None = None,
                waitForCompletion: bool = False, **settingsChanges) -> jobs.Job:
        """A new round: ``job``'s labels plus the ``corrected`` cases, starting from its model.

        ``corrected``: ``[(volumeNode, segmentationNode), ...]``, typically predictions the
        user edited. ``job`` may be any finished round of the folder (going back is
        allowed); the new round gets the next free number.
        """
        if job.state != jobs.DONE or not job.model_path.exists():
            raise InputError(f"round {job.round} has no trained model to start from (state: {job.state})")
        corrected = list(corrected)
        self.validateInputs(corrected, [], requireLabelled=False)
        folder = job.folder
        job_info = folder.read_job()
        classes = job_info["classes"]
        self._checkNoNewClasses(corrected, classes)
        previous = folder.read_round(job.round)
        settings = _roundSettings(settings_from_round(previous), _withIterations(iterations, settingsChanges))
        _checkSettings(folder, settings)
        round_number = folder.next_round()
        with _removedOnError(folder.labels_dir(round_number)):
            cases = self._carryOverCases(folder, previous, round_number)
            for volume, segmentation in corrected:
                name = self._caseNameOfVolume(job_info, volume)
                cases[name] = self._exportCase(folder, round_number, name, volume, segmentation, classes,
                                               exportImage=name not in job_info["cases"])
                cases[name]["corrected"] = True
                job_info["cases"][name] = _jobCaseEntry(cases[name])
        folder.write_job(job_info)
        return self._startRound(folder, round_number, cases, settings, job, waitForCompletion)

    def resumeRound(self, job: jobs.Job, waitForCompletion: bool = False) -> jobs.Job:
        """Go on with a round that stopped before its end (Slicer closed, the machine
        restarted, the process killed, or cancelled): the same round, with its own settings,
        from its last checkpoint, or, when its training was over, with only the prediction of
        the unlabelled cases. Nothing it trained is lost."""
        if not job.resumable:
            raise InputError(f"round {job.round} cannot be resumed (state: {job.state}; it needs a round that "
                             "was interrupted or cancelled after its first checkpoint, or whose training ended)")
        folder, info = job.folder, job.folder.read_round(job.round)
        command = jobs.resume_command(self.pythonCommand, folder, job.round)
        folder.write_round(job.round, {**info, "resumed": [*info.get("resumed", []), jobs.now_iso()]})
        env = jobs.child_environment(packageParent(), settings_from_round(info).get("device", "auto"))
        resumed = jobs.Job(folder, job.round, command, env=env, runner=self.processRunner).start()
        self.jobs.append(resumed)
        if waitForCompletion:
            resumed.wait()
        return resumed

    def _startRound(self, folder: jobs.JobFolder, round_number: int, cases: dict, settings: TrainSettings,
                    previous: jobs.Job | None, waitForCompletion: bool) -> jobs.Job:
        init_model = previous.model_path if previous is not None else None
        command = jobs.train_command(self.pythonCommand, folder, round_number, settings, init_model)
        folder.write_round(round_number, {
            "round": round_number,
            "previousRound": previous.round if previous is not None else None,
            "initModel": str(init_model) if init_model else None,
            "started": jobs.now_iso(),
            "settings": settings.to_dict(),
            "command": command,
            "cases": jobs.case_manifest(folder, cases),
            "unlabelled": sorted(name for name, case in cases.items() if not case.get("label")),
        })
        env = jobs.child_environment(packageParent(), settings.device)
        job = jobs.Job(folder, round_number, command, env=env, runner=self.processRunner).start()
        self.jobs.append(job)
        if waitForCompletion:
            job.wait()
        return job

    def openJob(self, jobFolder: str | os.PathLike, roundNumber: int | None = None) -> jobs.Job:
        """A round of an existing job folder (the history: go back to any round). A round
        still training in a process another session started is followed, as if started here."""
        folder = jobs.JobFolder(jobFolder)
        rounds = folder.rounds()
        if not rounds:
            raise InputError(f"{folder.root} holds no training round")
        number = roundNumber or rounds[-1]
        if number not in rounds:
            raise InputError(f"{folder.root} has no round {number}; it has {rounds}")
        self.relinkVolumes(folder)  # the scans loaded again in another session: new node IDs
        job = jobs.Job.from_past_round(folder, number)
        if not job.finished:
            self.jobs.append(job)  # stopped with the others when the scene closes
        return job

    def _newJobFolder(self, method: str) -> Path:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        root = self.jobsRoot / f"{stamp}-{sanitizeName(method)}"
        suffix = 1
        candidate = root
        while candidate.exists():
            suffix += 1
            candidate = root.with_name(f"{root.name}-{suffix}")
        return candidate

    def _caseNameOfVolume(self, job_info: dict, volume) -> str:
        for name, case in job_info["cases"].items():
            if case.get("volumeNodeID") == volume.GetID():
                return name
        return uniqueCaseNames([volume], taken=set(job_info["cases"]))[0]


# --------------------------------------------------------------------------------------
# Helpers (no state)
# --------------------------------------------------------------------------------------


def enginePython() -> list[str]:
    """The interpreter that runs the engine: Slicer's ``PythonSlicer`` inside Slicer."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if not found:
            candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if sys.platform == "win32" else ""))
            found = str(candidate) if candidate.exists() else sys.executable
        return [found]
    return [sys.executable]


def packageParent() -> Path:
    """The folder that holds the ``SSLSegmentLib`` package (put on the child's PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent


def defaultJobsRoot() -> Path:
    """Where job folders go: $SSLSEGMENT_JOBS_DIR, else beside Slicer's default scene folder."""
    if os.environ.get("SSLSEGMENT_JOBS_DIR"):
        return Path(os.environ["SSLSEGMENT_JOBS_DIR"])
    if hasattr(slicer, "app"):
        return Path(slicer.app.defaultScenePath) / "SSLSegment-jobs"
    return Path.home() / "SSLSegment-jobs"


def sanitizeName(name: str) -> str:
    """A file-system friendly case name from a node name."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name or "").strip("_")
    return cleaned or "case"


def uniqueCaseNames(volumes: Sequence, taken: set | None = None) -> list[str]:
    """Sanitized node names, made unique with ``_2``, ``_3``... (case-insensitive file systems too)."""
    used = {n.lower() for n in (taken or ())}
    names = []
    for volume in volumes:
        base = sanitizeName(volume.GetName())
        name, suffix = base, 1
        while name.lower() in used:
            suffix += 1
            name = f"{base}_{suffix}"
        used.add(name.lower())
        names.append(name)
    return names


@contextlib.contextmanager
def _removedOnError(path: Path):
    """Delete ``path`` (a folder this call creates) if the block fails."""
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _checkSettings(folder: jobs.JobFolder, settings: TrainSettings) -> None:
    """The engine's own checks of the round's command line (``--lr``, ``--patch-size``...)."""
    from .training.cli_train import check_train_arguments  # noqa: PLC0415

    check_train_arguments(jobs.train_command([], folder, 1, settings)[2:])


def _segmentNamesPerVolume(labeled: Sequence[tuple]) -> dict[str, list[str]]:
    """Volume name (numbered when repeated) -> its segmentation's segment names."""
    names: dict[str, list[str]] = {}
    for number, (volume, segmentation) in enumerate(labeled, start=1):
        key = f"volume '{volume.GetName()}'"
        names[key if key not in names else f"{key} (#{number})"] = segmentNames(segmentation)
    return names


def _jobCaseEntry(case: dict) -> dict:
    """What job.json keeps of a case (the label set belongs to each round)."""
    return {k: case[k] for k in ("image", "volumeNodeID", "volumeName", "volumeFingerprint") if k in case}


def _roundSettings(base: dict, changes: dict) -> TrainSettings:
    """``base`` (a previous round's settings) with ``changes`` (the logic's keywords), each
    checked and in the form the command line takes."""
    values = {**base, **settings_changes(changes)}
    if "time_budget" in values:
        values["time_budget"] = _positiveOrNone(values["time_budget"])
    if "spacing" in values:
        values["spacing"] = _spacingText(values["spacing"])
    for name, kind in (("dim", str), ("iterations", int), ("seed", int), ("extra_args", list)):
        if name in values:
            values[name] = kind(values[name])
    return TrainSettings(**values)


def _withIterations(iterations: int | None, changes: dict) -> dict:
    """A retrain's changes: an explicit iteration count replaces the previous round's time
    budget unless a budget is given too (0: no budget)."""
    changes = dict(changes)
    if iterations is not None:
        changes["iterations"] = iterations
        if changes.get("time_budget") is None and changes.get("timeBudget") is None:
            changes["time_budget"] = 0
    return changes


def _spacingText(spacing) -> str | None:
    """The ``--spacing`` argument, checked here so that a bad value is refused before any start."""
    from .spacing import parse_spacing  # noqa: PLC0415

    parsed = parse_spacing(spacing)
    if parsed is None or isinstance(parsed, str):
        return parsed
    return ",".join(f"{v:g}" for v in (parsed if isinstance(parsed, tuple) else (parsed,)))


def _positiveOrNone(minutes: float | None) -> float | None:
    if minutes is None or float(minutes) == 0:
        return None
    if float(minutes) < 0:
        raise InputError(f"the time budget must be a positive number of minutes, got {minutes}")
    return float(minutes)
