"""Segment new scans with a trained round's model, in a child process (``sslsegment predict``).

What users of Slicer's AI extensions do most (SlicerMONAIAuto3DSeg, TotalSegmentator):
choose a model and volumes, press Segment, get named segmentations under each volume,
with progress and cancel while the panel stays responsive. A run is one folder::

    RUN/                        JOB/segmenting/<stamp>-r<round>/ (or <jobs root>/segmenting/...)
      request.json              written by the parent before the start: model, cases, command
      images/<case>.nrrd        the volumes, exported with Slicer's storage node
      console.txt               the child's stdout and stderr
      predictions/              ``predict --out``, written by the child only:
        status.json             (:mod:`SSLSegmentLib.predict_status`)
        <case>.seg.nrrd  labelmaps/<case>.nrrd  confidence.json
        cancel                  written by the parent to ask the child to stop

:class:`SegmentingMixin` adds ``startSegmenting`` and ``loadSegmentingResults`` to
:class:`SSLSegmentLib.logic.SSLSegmentLogic`. Imports ``slicer`` (MRML), never ``qt``.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Sequence

from . import jobs
from .config import TrainConfig
from .errors import InputError
from .fileio import atomic_write_json
from .mrml import placeUnder, writeVolume
from .run_protocol import MODEL_FILE, read_status

ATTR_RUN = "SSLSegment.SegmentingRun"
ROLE_SEGMENTATION = "segmentation"  # ATTR_ROLE of a new scan's result (a training prediction is "prediction")


class SegmentingRun(jobs.Job):
    """One ``predict`` child segmenting new volumes (the :class:`jobs.Job` life cycle).

    ``cases``: ``{case: {"volumeNodeID", "volumeName", "image"}}``. A failure names the
    volumes that got no segmentation; ``done`` means every volume got one.
    """

    def __init__(self, root: Path, model_round: int, command: list[str], cases: dict[str, dict],
                 env: dict[str, str] | None = None, runner: jobs.ProcessRunner = jobs.start_process):
        self.root = Path(root)
        self.cases = cases
        super().__init__(jobs.JobFolder(self.root), model_round, command, env=env, runner=runner)

    @classmethod
    def from_folder(cls, root: str | os.PathLike) -> "SegmentingRun":
        """A run started earlier (no process): its state from status.json and its files."""
        request = jobs.read_json(Path(root) / "request.json", default=None)
        if not request:
            raise InputError(f"{root}: not a segmenting run (no request.json)")
        run = cls(Path(root), request.get("modelRound") or 0, request.get("command", []), request["cases"])
        status = read_status(run.run_dir) or {}
        state = status.get("state")
        if state in jobs.TERMINAL_STATES:
            run._finish(*run._checked(state, status.get("error")))
        else:
            run._finish(jobs.FAILED, "the segmenting process ended without a final status")
        return run

    @property
    def run_dir(self) -> Path:
        """``predict --out``: status, predictions, cancel."""
        return self.root / "predictions"

    @property
    def console_path(self) -> Path:
        return self.root / "console.txt"

    def segmentation_path(self, case: str) -> Path:
        return self.run_dir / f"{case}.seg.nrrd"

    def finished_cases(self) -> list[str]:
        return [case for case in self.cases if self.segmentation_path(case).exists()]

    def _outcome(self, returncode: int) -> tuple[str, str | None]:
        state, error = super()._outcome(returncode)
        return self._checked(state, error)

    def _checked(self, state: str, error: str | None) -> tuple[str, str | None]:
        """Done only when every volume has its segmentation; a failure names the volumes."""
        if state == jobs.CANCELLED:
            return state, None
        missing = [case for case in self.cases if case not in self.finished_cases()]
        if not missing:
            return state, error
        reason = error or "the segmenting process wrote no segmentation for it"
        reason = reason.replace("the training process", "the segmenting process")  # jobs.Job's wording
        # The case whose file the error names is the culprit; the others were not reached.
        culprits = [case for case in missing if re.search(rf"(?<![\w-]){re.escape(case)}(?![\w-])", reason)] or missing
        others = [case for case in missing if case not in culprits]
        message = f"segmenting volume {self._volumeNames(culprits)} failed: {reason}"
        if others:
            message += f" (not segmented either: {self._volumeNames(others)})"
        return jobs.FAILED, message

    def _volumeNames(self, cases: list[str]) -> str:
        return ", ".join(f"'{self.cases[case]['volumeName']}'" for case in cases)

    def fraction_done(self) -> float:
        if self._state == jobs.DONE:
            return 1.0
        return len(self.finished_cases()) / max(1, len(self.cases))


def status_text(run: SegmentingRun) -> str:
    """One line for the panel: volumes done, or how it ended."""
    state = run.poll()
    if state != jobs.RUNNING:
        return f"Segmenting: {state}" + (f" - {run.error}" if run.error else "")
    if run.cancel_requested:
        return "Segmenting: cancelling..."
    done = run.finished_cases()
    current = next((run.cases[c]["volumeName"] for c in run.cases if c not in done), "")
    return f"Segmenting: {len(done)}/{len(run.cases)} volumes done" + (f", now {current}" if current else "")


class SegmentingMixin:
    """``startSegmenting`` / ``loadSegmentingResults`` of :class:`SSLSegmentLib.logic.SSLSegmentLogic`.

    Uses the logic's ``scene``, ``jobsRoot``, ``pythonCommand``, ``processRunner``, ``jobs``
    (so a scene close stops the run too) and its helpers.
    """

    def startSegmenting(self, model, volumes: Sequence, device: str = TrainConfig.device, largestComponent: bool = False,
                        waitForCompletion: bool = False) -> SegmentingRun:
        """Export ``volumes`` and segment them with ``model`` in a child process.

        ``model``: a finished training round (:class:`jobs.Job`, e.g. from ``openJob``), or
        a run folder / ``model.pt`` path. Bad input raises :class:`InputError` before any
        process starts. Returns the running :class:`SegmentingRun` (poll it, or
        ``waitForCompletion``); load the results with :meth:`loadSegmentingResults`.
        """
        from .logic import _removedOnError, packageParent, uniqueCaseNames  # noqa: PLC0415  (logic imports us)

        model_path, model_round, job_root = _resolveModel(model)
        volumes = list(volumes)
        if not volumes:
            raise InputError("No volume to segment: choose one or more volumes.")
        seen: set[str] = set()
        for volume in volumes:
            self._checkVolume(volume, seen)
        root = _newRunFolder(Path(job_root) / "segmenting" if job_root else Path(self.jobsRoot) / "segmenting",
                             model_round)
        cases = {}
        with _removedOnError(root):  # refused or failed export: no half-made run folder
            root.mkdir(parents=True)
            for volume, name in zip(volumes, uniqueCaseNames(volumes)):
                image = root / "images" / f"{name}.nrrd"
                writeVolume(volume, image)
                cases[name] = {"volumeNodeID": volume.GetID(), "volumeName": volume.GetName(),
                               "image": image.relative_to(root).as_posix()}
            command = [*self.pythonCommand, "-m", "SSLSegmentLib", "predict", "--model", str(model_path),
                       "--images", str(root / "images"), "--out", str(root / "predictions"), "--device", device,
                       "--threads", str(jobs.child_threads())]
            if largestComponent:
                command.append("--largest-component")
            atomic_write_json(root / "request.json", {
                "started": jobs.now_iso(), "model": str(model_path), "modelRound": model_round,
                "job": str(job_root) if job_root else None, "command": command, "cases": cases})
        env = jobs.child_environment(packageParent(), device)
        run = SegmentingRun(root, model_round or 0, command, cases, env=env, runner=self.processRunner).start()
        self.jobs.append(run)
        if waitForCompletion:
            run.wait()
        return run

    def loadSegmentingResults(self, run: SegmentingRun) -> dict:
        """``{volumeNodeID: segmentationNode}``: a new segmentation per volume that got one.

        Named after the volume and the model round, segments named and coloured as the
        model's classes, in the volume's geometry, under the volume in the subject
        hierarchy. Loading twice gives the same nodes. After a partial failure the volumes
        that were segmented are loaded (``run.error`` names the others).
        """
        from .logic import ATTR_CASE, ATTR_JOB, ATTR_ROLE, ATTR_ROUND, nodesByClass  # noqa: PLC0415

        if not run.finished:
            raise InputError("segmenting is still running: wait for it or cancel it")
        already = {node.GetAttribute(ATTR_CASE): node for node in nodesByClass(self.scene, "vtkMRMLSegmentationNode")
                   if node.GetAttribute(ATTR_RUN) == str(run.root)}
        job_root = (jobs.read_json(run.root / "request.json", default={}) or {}).get("job")
        classes = jobs.JobFolder(job_root).read_job()["classes"] if job_root else []
        loaded = {}
        for case in run.finished_cases():
            entry = run.cases[case]
            volume = self.scene.GetNodeByID(entry["volumeNodeID"])
            if volume is None or volume.GetName() != entry["volumeName"]:
                continue  # the volume left the scene (or another scene reused its ID)
            if case in already:
                loaded[volume.GetID()] = already[case]
                continue
            segmentation = self._readPrediction(run.segmentation_path(case), volume, classes)
            suffix = f"r{run.round}" if run.round else "model"
            segmentation.SetName(self.scene.GenerateUniqueName(f"{volume.GetName()} segmentation {suffix}"))
            for key, value in ((ATTR_RUN, str(run.root)), (ATTR_CASE, case), (ATTR_ROLE, ROLE_SEGMENTATION),
                               (ATTR_ROUND, str(run.round)), (ATTR_JOB, str(job_root or ""))):
                segmentation.SetAttribute(key, value)
            placeUnder(segmentation, volume)
            loaded[volume.GetID()] = segmentation
        return loaded


def _resolveModel(model) -> tuple[Path, int | None, Path | None]:
    """``(model.pt, round or None, job folder or None)`` of a round or a path."""
    if isinstance(model, jobs.Job):
        if model.state != jobs.DONE or not model.model_path.exists():
            raise InputError(f"round {model.round} has no trained model (state: {model.state}): "
                             "choose a finished round")
        return model.model_path, model.round, model.folder.root
    path = Path(model)
    path = path / MODEL_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{path}: no model file (train a model first, or choose a round folder holding model.pt)")
    return path, None, None


def _newRunFolder(parent: Path, model_round: int | None) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = parent / (f"{stamp}-r{model_round:03d}" if model_round else stamp)
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate
