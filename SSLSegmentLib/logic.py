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

Patterns from SlicerMONAIAuto3DSeg (child process, results as named segments under the
volume in the subject hierarchy), SlicerNNUnet (the process runner injected into the logic)
and MONAI Label (only labels approved by a person train).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterable, Sequence

import slicer
import vtk

from . import jobs
from .data.class_names import check_classes_in_every_case, check_every_class_drawn, class_key, display_name
from .config import DEFAULT_METHOD
from .errors import InputError
from .fileio import atomic_path, atomic_write_json
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

log = logging.getLogger(__name__)

# Node attributes that mark what SSLSegment created (read back by the widget and exports).
ATTR_JOB = "SSLSegment.JobFolder"
ATTR_ROUND = "SSLSegment.Round"
ATTR_CASE = "SSLSegment.Case"
ATTR_ROLE = "SSLSegment.Role"  # "prediction"
ATTR_CORRECTED = "SSLSegment.Corrected"  # "true" once a person approved/edited it
ATTR_CONFIDENCE = "SSLSegment.Confidence"
ATTR_OUT_OF_DOMAIN = "SSLSegment.OutOfDomain"  # why the image lies far outside the training images (confidence 0)

LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".nhdr")

#: Roles a volume can have in the Data table.
LABELLED, UNLABELLED, EXCLUDED = "labelled", "unlabelled", "excluded"

#: What the panel offers. The engine's registries import torch, which Slicer may not have
#: yet when the panel opens, so the names are listed here (a test keeps them equal).
METHOD_CHOICES = ("bcp", "supervised", "mean_teacher", "uamt", "cps", "fixmatch", "cct", "urpc", "ict", "ctct",
                  "entropy_minimization", "rdrop", "adversarial", "dct")
NETWORK_CHOICES = ("unet", "dynunet", "attention_unet", "vnet", "enet", "swin_unet")
PRESET_CHOICES = ("auto", "fast-cpu", "balanced", "quality-gpu")
DIM_CHOICES = ("auto", "2", "3")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
SIZE_CHOICES = ("preset", "tiny", "small", "base")
SPACING_CHOICES = ("preset", "data", "fit")
EXPORT_FORMAT_CHOICES = ("seg.nrrd", "nrrd", "nii.gz")


class SSLSegmentLogic(SegmentingMixin):
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

    def startTraining(self, labeled: Sequence[tuple], unlabeled: Sequence = (), method: str = DEFAULT_METHOD,
                      network: str = "unet", dim: str | int = "auto", iterations: int = 2000,
                      device: str = "auto", seed: int = 1337, size: str | None = None,
                      preset: str | None = None, extraArgs: Sequence[str] = (),
                      timeBudget: float | None = None, spacing: str | None = None,
                      jobFolder: str | os.PathLike | None = None,
                      waitForCompletion: bool = False) -> jobs.Job:
        """Export the cases to a new job folder and start round 1 in a child process.

        ``labeled``: ``[(volumeNode, segmentationNode), ...]``; ``unlabeled``: volume nodes.
        Classes are the segment names (union, in order of first appearance). Bad input
        raises :class:`InputError` before any process starts. Returns the running job
        (finished when ``waitForCompletion``). ``timeBudget``: train for this many minutes
        (prediction included) instead of ``iterations``. ``spacing``: the training spacing
        ("data", "fit" or mm, see ``SSLSegmentLib.spacing``); None: the preset's.
        """
        labeled, unlabeled = list(labeled), list(unlabeled)
        self.validateInputs(labeled, unlabeled)
        classes = self.classesFromSegmentations([seg for _, seg in labeled])
        check_classes_in_every_case(_segmentNamesPerVolume(labeled))
        folder = jobs.JobFolder(jobFolder or self._newJobFolder(method))
        if folder.job_file.exists():
            raise InputError(f"job folder {folder.root} is already used by another job")
        settings = jobs.TrainSettings(method=method, network=network, dim=str(dim), iterations=int(iterations),
                                      device=device, seed=int(seed), size=size, preset=preset,
                                      extra_args=list(extraArgs), time_budget=_positiveOrNone(timeBudget),
                                      spacing=_spacingText(spacing))
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
        settings = jobs.TrainSettings(**{**_settingsFrom(previous), **_settingsChanges(iterations, settingsChanges)})
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

    def _startRound(self, folder: jobs.JobFolder, round_number: int, cases: dict, settings: jobs.TrainSettings,
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
        """A finished round of an existing job folder (the history: go back to any round)."""
        folder = jobs.JobFolder(jobFolder)
        rounds = folder.rounds()
        if not rounds:
            raise InputError(f"{folder.root} holds no training round")
        number = roundNumber or rounds[-1]
        if number not in rounds:
            raise InputError(f"{folder.root} has no round {number}; it has {rounds}")
        return jobs.Job.from_past_round(folder, number)

    # ----------------------------------------------------------------------------------
    # Input checks and export
    # ----------------------------------------------------------------------------------

    def validateInputs(self, labeled: Sequence[tuple], unlabeled: Sequence, requireLabelled: bool = True) -> None:
        """Raise :class:`InputError` with a clear message for input training cannot use."""
        if requireLabelled and not labeled:
            raise InputError("No labelled volume: give at least one volume with a segmentation of its structures.")
        seen: set[str] = set()
        for entry in labeled:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise InputError("Labelled cases must be (volume, segmentation) pairs.")
            volume, segmentation = entry
            self._checkVolume(volume, seen)
            self._checkSegmentation(volume, segmentation)
        for volume in unlabeled:
            self._checkVolume(volume, seen)

    def _checkVolume(self, volume, seen: set) -> None:
        if volume is None:
            raise InputError("A volume is missing (None).")
        name = volume.GetName()
        if volume.GetID() in seen:
            raise InputError(f"Volume '{name}' is given twice (labelled and unlabelled, or repeated).")
        seen.add(volume.GetID())
        if volume.IsA("vtkMRMLLabelMapVolumeNode") or not volume.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"'{name}' is not a scalar image volume ({volume.GetClassName()}).")
        image = volume.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise InputError(f"Volume '{name}' has no image data.")
        if volume.IsA("vtkMRMLVectorVolumeNode") or image.GetNumberOfScalarComponents() != 1:
            raise InputError(f"Volume '{name}' has {image.GetNumberOfScalarComponents()} components per voxel "
                             "(4D, vector or colour image): give a single 3D scalar volume.")
        if volume.GetParentTransformNode() is not None:
            raise InputError(f"Volume '{name}' is under a transform: harden the transform first (Data module).")

    def _checkSegmentation(self, volume, segmentation) -> None:
        name = volume.GetName()
        if segmentation is None or not segmentation.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"Volume '{name}' is labelled but has no segmentation node.")
        segment_names = segmentNames(segmentation)
        if not segment_names:
            raise InputError(f"Segmentation '{segmentation.GetName()}' of volume '{name}' has no segments.")
        duplicates = sorted({n for n in segment_names if segment_names.count(n) > 1})
        if duplicates:
            raise InputError(f"Segmentation '{segmentation.GetName()}' has several segments named "
                             f"{', '.join(duplicates)}: segment names are the class names and must be unique.")
        if segmentation.GetParentTransformNode() is not None:
            raise InputError(f"Segmentation '{segmentation.GetName()}' is under a transform: harden it first.")
        unplaceable = unplaceableWithoutReference(segmentation, volume)
        if unplaceable:
            raise InputError(f"Segmentation '{segmentation.GetName()}' of volume '{name}' has no reference geometry "
                             f"and {unplaceable}. In the Segment Editor, select '{name}' as the source volume "
                             "(or Specify geometry: use the volume), then start again.")
        problem = geometryMismatch(segmentation, volume)
        if problem:
            raise InputError(f"Segmentation '{segmentation.GetName()}' was drawn on another geometry than volume "
                             f"'{name}' ({problem}). Pair each volume with its own segmentation, or resample "
                             "the segmentation to the volume (Segment Editor: Specify geometry).")

    def _checkNoNewClasses(self, corrected: Sequence[tuple], classes: list[dict]) -> None:
        known = {class_key(c["name"]) for c in classes}
        for _, segmentation in corrected:
            new = [n for n in segmentNames(segmentation) if class_key(n) not in known]
            if new:
                raise InputError(f"Segmentation '{segmentation.GetName()}' has segments that are not classes of "
                                 f"this job ({', '.join(new)}); known classes: {', '.join(sorted(known))}. "
                                 "Rename them, or start a new training to add classes.")

    def classesFromSegmentations(self, segmentations: Iterable) -> list[dict]:
        """Classes from segment names (trimmed, case-folded: ``RV`` and ``rv `` are one class):
        union in order of first appearance, first spelling and colour win."""
        classes: dict[str, dict] = {}
        for segmentation in segmentations:
            for segment in segments(segmentation):
                name = segment.GetName()
                if class_key(name) not in classes:
                    classes[class_key(name)] = {"name": display_name(name),
                                                "color": [round(c, 4) for c in segment.GetColor()],
                                     "terminology": segment.GetTerminology() or None}
        return list(classes.values())

    def _newJobFolder(self, method: str) -> Path:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        root = self.jobsRoot / f"{stamp}-{sanitizeName(method)}"
        suffix = 1
        candidate = root
        while candidate.exists():
            suffix += 1
            candidate = root.with_name(f"{root.name}-{suffix}")
        return candidate

    def _exportCase(self, folder: jobs.JobFolder, round_number: int, name: str, volume, segmentation,
                    classes: list[dict], exportImage: bool = True) -> dict:
        """Write a case's image (and label) into the job folder; the case entry (relative paths)."""
        image = folder.images_dir / f"{name}.nrrd"
        case = {"image": image.relative_to(folder.root).as_posix(), "label": None, "corrected": False,
                "volumeNodeID": volume.GetID(), "volumeName": volume.GetName()}
        if segmentation is not None:  # first: it checks the label has content
            label = folder.labels_dir(round_number) / f"{name}.seg.nrrd"
            self.exportSegmentation(segmentation, label, referenceVolumeNode=volume, requireContent=True)
            case.update(label=label.relative_to(folder.root).as_posix(),
                        segmentationNodeID=segmentation.GetID(), segmentationName=segmentation.GetName())
        if exportImage:
            writeVolume(volume, image)
        return case

    def _carryOverCases(self, folder: jobs.JobFolder, previous: dict, round_number: int) -> dict:
        """The previous round's cases, its label files copied into the new round's label set."""
        cases = {}
        target = folder.labels_dir(round_number)
        target.mkdir(parents=True, exist_ok=True)
        for name, case in previous.get("cases", {}).items():
            case = {k: v for k, v in case.items() if not k.endswith("Sha256")}
            if case.get("label"):
                source = folder.root / case["label"]
                shutil.copy2(source, target / source.name)
                case["label"] = (target / source.name).relative_to(folder.root).as_posix()
            cases[name] = case
        return cases

    def _caseNameOfVolume(self, job_info: dict, volume) -> str:
        for name, case in job_info["cases"].items():
            if case.get("volumeNodeID") == volume.GetID():
                return name
        return uniqueCaseNames([volume], taken=set(job_info["cases"]))[0]

    # ----------------------------------------------------------------------------------
    # Results
    # ----------------------------------------------------------------------------------

    def loadPredictions(self, job: jobs.Job) -> dict:
        """One new segmentation node per predicted volume: ``{volumeNodeID: segmentationNode}``.

        Segments named and coloured as the classes, geometry referenced to the volume, the
        node placed under the volume in the subject hierarchy. Existing nodes are never
        changed; volumes that left the scene are skipped.
        """
        if job.state != jobs.DONE:
            raise InputError(f"round {job.round} is {job.state}: there are no predictions to load")
        job_info = job.folder.read_job()
        confidence = self._caseConfidence(job)
        out_of_domain = jobs.read_json(job.predictions_dir / "out_of_domain.json", default={}) or {}
        already = self._loadedPredictions(job)
        loaded = {}
        for name in job.folder.read_round(job.round).get("unlabelled", []):
            path = job.predictions_dir / f"{name}.seg.nrrd"
            volume = self._volumeOfCase(job_info, name)
            if volume is None or not path.exists():
                log.warning("SSLSegment: no prediction loaded for case %s (volume or file missing)", name)
                continue
            if name in already:  # loading a round twice gives the same nodes, not copies
                loaded[volume.GetID()] = already[name]
                continue
            segmentation = self._readPrediction(path, volume, job_info["classes"])
            segmentation.SetName(self.scene.GenerateUniqueName(f"{volume.GetName()} prediction r{job.round}"))
            for key, value in ((ATTR_JOB, str(job.folder.root)), (ATTR_ROUND, str(job.round)), (ATTR_CASE, name),
                               (ATTR_ROLE, "prediction"), (ATTR_CORRECTED, "false")):
                segmentation.SetAttribute(key, value)
            if name in confidence:
                segmentation.SetAttribute(ATTR_CONFIDENCE, f"{confidence[name]:.6f}")
            if name in out_of_domain:
                segmentation.SetAttribute(ATTR_OUT_OF_DOMAIN, "; ".join(out_of_domain[name].get("problems", [])))
            placeUnder(segmentation, volume)
            loaded[volume.GetID()] = segmentation
        return loaded

    def _loadedPredictions(self, job: jobs.Job) -> dict:
        """``{case: node}`` of the predictions of exactly this round already in the scene."""
        return {node.GetAttribute(ATTR_CASE): node for node in nodesByClass(self.scene, "vtkMRMLSegmentationNode")
                if node.GetAttribute(ATTR_JOB) == str(job.folder.root)
                and node.GetAttribute(ATTR_ROUND) == str(job.round)
                and node.GetAttribute(ATTR_ROLE) == "prediction"}

    def _readPrediction(self, path: Path, volume, classes: list[dict]):
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(segmentation):
            self.scene.RemoveNode(segmentation)
            raise InputError(f"could not read the prediction {path}")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        by_name = {class_key(c["name"]): c for c in classes}
        for segment in segments(segmentation):
            known = by_name.get(class_key(segment.GetName()))
            if known:
                segment.SetName(known["name"])  # the job's spelling of the class
                segment.SetColor(*known["color"])
                if known.get("terminology"):
                    segment.SetTerminology(known["terminology"])
        return segmentation

    def _volumeOfCase(self, job_info: dict, name: str):
        case = job_info["cases"].get(name, {})
        volume = self.scene.GetNodeByID(case.get("volumeNodeID", "")) if case.get("volumeNodeID") else None
        if volume is not None and volume.GetName() == case.get("volumeName"):
            return volume
        return None  # another scene reused the ID for another volume

    def _caseConfidence(self, job: jobs.Job) -> dict:
        data = jobs.read_json(job.predictions_dir / "confidence.json", default={}) or {}
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}

    def predictionConfidence(self, job: jobs.Job) -> dict:
        """``{volumeNodeID: mean max softmax}`` of the round's predictions (higher: surer)."""
        job_info = job.folder.read_job()
        result = {}
        for name, value in self._caseConfidence(job).items():
            volume_id = job_info["cases"].get(name, {}).get("volumeNodeID")
            if volume_id:
                result[volume_id] = value
        return result

    def suggestVolumeToCorrect(self, job: jobs.Job, exclude: Iterable[str] = ()) -> str | None:
        """The volume node ID of the least confident prediction (uncertainty sampling)."""
        excluded = set(exclude)
        candidates = {k: v for k, v in self.predictionConfidence(job).items() if k not in excluded}
        return min(candidates, key=candidates.get) if candidates else None

    @staticmethod
    def setCorrected(segmentationNode, corrected: bool = True) -> None:
        """Mark a prediction as approved/edited by a person: only then may it train."""
        segmentationNode.SetAttribute(ATTR_CORRECTED, "true" if corrected else "false")

    @staticmethod
    def isCorrected(segmentationNode) -> bool:
        return segmentationNode.GetAttribute(ATTR_CORRECTED) == "true"

    def roundHistory(self, job: jobs.Job) -> list[dict]:
        """One summary per round of the job's folder (state, labels, corrected cases, Dice, model)."""
        return job.folder.history()

    def resultRows(self, job: jobs.Job) -> list[dict]:
        """What the Results table shows: one row per prediction node of the job in the scene."""
        job_info = job.folder.read_job()
        rows = []
        for case, segmentation in sorted(self.predictionNodes(job).items()):
            rows.append({"case": case, "volume": self._volumeOfCase(job_info, case), "segmentation": segmentation,
                         "round": int(segmentation.GetAttribute(ATTR_ROUND)),
                         "confidence": _floatOrNone(segmentation.GetAttribute(ATTR_CONFIDENCE)),
                         "outOfDomain": segmentation.GetAttribute(ATTR_OUT_OF_DOMAIN),
                         "corrected": self.isCorrected(segmentation)})
        return rows

    def correctedPredictions(self, job: jobs.Job) -> list[tuple]:
        """``[(volumeNode, segmentationNode)]`` of the job's predictions a person marked corrected."""
        return [(row["volume"], row["segmentation"]) for row in self.resultRows(job)
                if row["corrected"] and row["volume"] is not None]

    # ----------------------------------------------------------------------------------
    # Export
    # ----------------------------------------------------------------------------------

    def exportSegmentation(self, segmentationNode, path: str | os.PathLike, referenceVolumeNode=None,
                           classNames: Sequence[str] | None = None, requireContent: bool = False) -> Path:
        """Write a segmentation in the reference volume's geometry; the format from the extension.

        ``.seg.nrrd``: Slicer segmentation (segment names, colours, terminology; overlaps
        kept). Other extensions (``.nrrd``, ``.nii.gz``...): a labelmap where the value of a
        segment is its position in ``classNames`` + 1 (default: segment order).
        """
        path = Path(path)
        reference = referenceVolumeNode or referenceVolume(segmentationNode)
        if reference is None:
            raise InputError(f"Segmentation '{segmentationNode.GetName()}' has no reference volume: give one.")
        if path.name.endswith(".seg.nrrd"):
            self._writeSegNrrd(segmentationNode, reference, path, requireContent)
        elif path.name.endswith(LABELMAP_SUFFIXES):
            names = list(classNames) if classNames else segmentNames(segmentationNode)
            with self._labelmapIn(segmentationNode, reference, names) as labelmap:
                if requireContent:
                    requireLabelledVoxels(labelmap, segmentationNode)
                writeVolume(labelmap, path)
        else:
            raise InputError(f"{path.name}: use .seg.nrrd (segmentation) or .nrrd / .nii.gz (labelmap)")
        return path

    def _writeSegNrrd(self, segmentationNode, reference, path: Path, requireContent: bool) -> None:
        with self._temporaryNode("vtkMRMLSegmentationNode") as copy:
            copy.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
            # Its display node now, inside this temporary scope: one made by the labelmap export
            # below would be removed with that export's nodes while the copy still refers to it
            # (a crash in WriteData where views observe the scene, e.g. the browser UI).
            copy.CreateDefaultDisplayNodes()
            resampleToVolume(copy, reference)
            if requireContent:
                names = segmentNames(copy)
                with self._labelmapIn(copy, reference, names) as labelmap:
                    requireLabelledVoxels(labelmap, segmentationNode)
            storage = slicer.vtkMRMLSegmentationStorageNode()
            storage.SetCropToMinimumExtent(False)  # the full volume extent: other readers need it
            with atomic_path(path) as tmp:
                storage.SetFileName(str(tmp))
                if not storage.WriteData(copy):
                    raise OSError(f"could not write {path}")

    @contextlib.contextmanager
    def _labelmapIn(self, segmentationNode, reference, classNames: Sequence[str]):
        """A temporary labelmap node of the segments in ``reference``'s geometry, value = class index + 1."""
        with self._temporaryNode("vtkMRMLColorTableNode") as colors, \
                self._temporaryNode("vtkMRMLLabelMapVolumeNode") as labelmap:
            colors.SetTypeToUser()
            colors.SetNumberOfColors(len(classNames) + 1)
            colors.SetColor(0, "background", 0, 0, 0, 0)
            for index, name in enumerate(classNames, start=1):
                colors.SetColor(index, name, 1, 1, 1, 1)
            ids = vtk.vtkStringArray()
            segmentationNode.GetSegmentation().GetSegmentIDs(ids)
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, reference, 0, colors)
            if not exported:
                raise InputError(f"could not export segmentation '{segmentationNode.GetName()}' to a labelmap")
            yield labelmap

    @contextlib.contextmanager
    def _temporaryNode(self, className: str):
        """A hidden node that is removed again with whatever came with it (display, colour
        table nodes made by an export), whatever happens: the scene is left as it was."""
        before = _nodeIDs(self.scene)
        node = self.scene.AddNewNodeByClass(className, self.scene.GenerateUniqueName("__SSLSegment_temp__"))
        node.SetHideFromEditors(True)
        try:
            yield node
        finally:
            for node_id in _nodeIDs(self.scene) - before:
                leftover = self.scene.GetNodeByID(node_id)
                if leftover is not None:
                    self.scene.RemoveNode(leftover)

    def exportResults(self, job: jobs.Job, folder: str | os.PathLike, fileFormat: str = "seg.nrrd") -> Path:
        """Export every loaded prediction of the job (latest round per volume) and a manifest.

        ``fileFormat``: ``"seg.nrrd"`` or a labelmap extension (``"nrrd"``, ``"nii.gz"``).
        The manifest (``manifest.json`` and ``manifest.csv``) lists case, file, classes,
        model round and whether a person corrected it.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        job_info = job.folder.read_job()
        class_names = [c["name"] for c in job_info["classes"]]
        rows = []
        for case, segmentation in sorted(self.predictionNodes(job).items()):
            volume = self._volumeOfCase(job_info, case)
            extension = fileFormat.lstrip(".")
            path = folder / f"{case}.{extension}"
            self.exportSegmentation(segmentation, path, referenceVolumeNode=volume, classNames=class_names)
            rows.append({"case": case, "volume": volume.GetName() if volume else None, "file": path.name,
                         "format": "segmentation" if extension == "seg.nrrd" else "labelmap",
                         "classes": class_names, "modelRound": int(segmentation.GetAttribute(ATTR_ROUND)),
                         "corrected": self.isCorrected(segmentation),
                         "confidence": _floatOrNone(segmentation.GetAttribute(ATTR_CONFIDENCE))})
        manifest = {"job": str(job.folder.root), "exported": jobs.now_iso(), "classes": job_info["classes"],
                    "cases": rows}
        atomic_write_json(folder / "manifest.json", manifest)
        with atomic_path(folder / "manifest.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "volume", "file", "classes", "modelRound", "corrected", "confidence"])
            for row in rows:
                writer.writerow([row["case"], row["volume"], row["file"], ";".join(row["classes"]),
                                 row["modelRound"], row["corrected"], row["confidence"]])
        return folder / "manifest.json"

    def predictionNodes(self, job: jobs.Job) -> dict:
        """``{case: segmentationNode}``: the latest-round prediction node of each case of the job in the scene."""
        latest: dict[str, object] = {}
        for node in nodesByClass(self.scene, "vtkMRMLSegmentationNode"):
            if node.GetAttribute(ATTR_JOB) != str(job.folder.root) or node.GetAttribute(ATTR_ROLE) != "prediction":
                continue
            case = node.GetAttribute(ATTR_CASE)
            best = latest.get(case)
            if best is None or int(node.GetAttribute(ATTR_ROUND)) >= int(best.GetAttribute(ATTR_ROUND)):
                latest[case] = node
        return latest

    # ----------------------------------------------------------------------------------
    # What the Data table shows
    # ----------------------------------------------------------------------------------

    def detectRoles(self) -> list[dict]:
        """Each scalar volume of the scene with a proposed role and the segmentation holding its labels.

        A volume is labelled when a segmentation with segments references it (its
        reference geometry or the subject hierarchy), predictions not approved excluded.
        """
        rows = []
        segmentations = [s for s in nodesByClass(self.scene, "vtkMRMLSegmentationNode")
                         if segmentNames(s) and (s.GetAttribute(ATTR_ROLE) != "prediction" or self.isCorrected(s))]
        for volume in nodesByClass(self.scene, "vtkMRMLScalarVolumeNode"):
            if volume.IsA("vtkMRMLLabelMapVolumeNode") or volume.GetHideFromEditors():
                continue
            labels = [s for s in segmentations if referenceVolume(s) is volume]
            role = LABELLED if labels else UNLABELLED
            image = volume.GetImageData()
            if image is None or image.GetNumberOfScalarComponents() != 1:
                role = EXCLUDED
            rows.append({"volume": volume, "role": role, "segmentation": labels[0] if labels else None})
        return rows


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


def _nodeIDs(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _checkSettings(folder: jobs.JobFolder, settings: jobs.TrainSettings) -> None:
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
    return {k: case[k] for k in ("image", "volumeNodeID", "volumeName") if k in case}


def _settingsFrom(round_info: dict) -> dict:
    known = jobs.TrainSettings.__dataclass_fields__
    return {k: v for k, v in round_info.get("settings", {}).items() if k in known}


def _settingsChanges(iterations: int | None, changes: dict) -> dict:
    aliases = {"extraArgs": "extra_args", "timeBudget": "time_budget"}
    result = {aliases.get(k, k): v for k, v in changes.items() if v is not None}
    unknown = set(result) - set(jobs.TrainSettings.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}")
    if iterations is not None:
        result["iterations"] = int(iterations)
        result.setdefault("time_budget", None)  # an explicit count replaces the previous round's budget
    return result


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


def _floatOrNone(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
