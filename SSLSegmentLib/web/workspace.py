"""What the browser UI works on: volumes, their roles and labels, and the training job.

No trame here: the workspace holds MRML nodes of one scene and calls the same
:class:`SSLSegmentLib.logic.SSLSegmentLogic` as the Slicer panel, so it is tested without a
browser. The person's labels live in their own segmentation node per volume; predictions
come in new nodes (the logic's ``loadPredictions``) and are never written over labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer

from .. import jobs
from ..data.labels import ClassInfo, default_color, read_label
from ..errors import InputError
from ..logic import EXCLUDED, LABELLED, UNLABELLED, SSLSegmentLogic, readVolume, segmentNames
from ..mrml import segmentationFromLabelArray

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd")
ROLES = (LABELLED, UNLABELLED, EXCLUDED)


@dataclass
class Limits:
    """Bounds that keep one server within its machine (a clear message past each)."""
    max_volumes: int = 200
    max_upload_bytes: int = 512 * 1024 * 1024


@dataclass
class Entry:
    """One volume of the list: its node, the person's labels, a role, the latest prediction."""
    volume: object
    labels: object | None = None
    role: str = UNLABELLED
    prediction: object | None = None
    excluded_by_person: bool = False
    notes: list[str] = field(default_factory=list)
    voxel_count: tuple[int, int] | None = None  # (labels' modification time, count)


def image_name(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class Workspace:
    """Volumes, labels, training rounds and exports of one browser session."""

    def __init__(self, scene, logic: SSLSegmentLogic, limits: Limits | None = None,
                 value_names: dict[int, str] | None = None):
        self.scene = scene
        self.logic = logic
        self.limits = limits or Limits()
        self.value_names = value_names
        self.entries: dict[str, Entry] = {}  # volume node ID -> entry, in insertion order
        self.job: jobs.Job | None = None

    # ---------------------------------------------------------------- data
    def add_folder(self, images: str | os.PathLike, labels: str | os.PathLike | None = None) -> list[str]:
        """Load every image of ``images`` (with the same-named label of ``labels``); the IDs."""
        images = Path(images)
        if not images.is_dir():
            raise InputError(f"--images {images}: not a folder")
        paths = sorted(p for p in images.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        if not paths:
            raise InputError(f"--images {images}: no image (.nrrd, .nii.gz, .mha) in it")
        label_files = _label_files(Path(labels)) if labels else {}
        return [self.add_volume(path, label_files.get(image_name(path))) for path in paths]

    def add_volume(self, path: str | os.PathLike, label_path: str | os.PathLike | None = None) -> str:
        """Read one image (and its label file); its volume node ID."""
        if len(self.entries) >= self.limits.max_volumes:
            raise InputError(f"{Path(path).name}: this server holds at most {self.limits.max_volumes} volumes "
                             "(serve --max-volumes); remove some or start another server")
        volume = readVolume(self.scene, path)
        name = image_name(Path(path))
        taken = {e.volume.GetName() for e in self.entries.values()}
        volume.SetName(name if name not in taken else self.scene.GenerateUniqueName(name))
        volume.CreateDefaultDisplayNodes()
        entry = Entry(volume=volume)
        self.entries[volume.GetID()] = entry
        if volume.GetImageData() is None or volume.GetImageData().GetNumberOfScalarComponents() != 1:
            entry.role, entry.excluded_by_person = EXCLUDED, False
            entry.notes.append("not a single-component 3D image")
        if label_path is not None:
            entry.labels = self._read_labels(volume, Path(label_path))
            self._update_role(entry)
        return volume.GetID()

    def _read_labels(self, volume, path: Path):
        label = read_label(path, self.value_names)
        dims = volume.GetImageData().GetDimensions()
        if tuple(label.array.shape) != (dims[2], dims[1], dims[0]):
            raise InputError(f"label {path.name}: size {label.array.shape[::-1]} (x, y, z) differs from "
                             f"its image {volume.GetName()} {dims}")
        values = sorted(label.segments)
        remapped = np.zeros(label.array.shape, dtype=np.uint8)
        for index, value in enumerate(values, start=1):
            remapped[label.array == value] = index
        classes = [label.segments[v] for v in values]
        return segmentationFromLabelArray(self.scene, volume, remapped, classes, f"{volume.GetName()} labels")

    def rows(self) -> list[dict]:
        """What the Data table shows, one row per volume."""
        rows = []
        for volume_id, entry in self.entries.items():
            confidence = entry.prediction.GetAttribute("SSLSegment.Confidence") if entry.prediction else None
            rows.append({"id": volume_id, "name": entry.volume.GetName(), "role": entry.role,
                         "classes": ", ".join(segmentNames(entry.labels)) if entry.labels else "",
                         "labelled_voxels": self.labelled_voxels(volume_id),
                         "confidence": round(float(confidence), 3) if confidence else None,
                         "corrected": bool(entry.prediction and self.logic.isCorrected(entry.prediction)),
                         "notes": "; ".join(entry.notes)})
        return rows

    def classes(self) -> list[ClassInfo]:
        """Classes of all labels, in order of first appearance (segment names are the classes)."""
        found = self.logic.classesFromSegmentations([e.labels for e in self.entries.values() if e.labels])
        return [ClassInfo(c["name"], tuple(c["color"])) for c in found]

    def set_role(self, volume_id: str, role: str) -> None:
        if role not in ROLES:
            raise InputError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        entry = self._entry(volume_id)
        entry.excluded_by_person = role == EXCLUDED
        if role == LABELLED and not self.labelled_voxels(volume_id):
            raise InputError(f"{entry.volume.GetName()} has no labelled voxel yet: paint its structures first")
        entry.role = role if role != UNLABELLED or not entry.labels else UNLABELLED
        if role == UNLABELLED:
            entry.excluded_by_person = False

    def labels_for_editing(self, volume_id: str, new_class: str = "class 1"):
        """The person's segmentation of the volume, made (with the known classes) if absent."""
        entry = self._entry(volume_id)
        if entry.labels is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{entry.volume.GetName()} labels")
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(entry.volume)
            classes = self.classes() or [ClassInfo(new_class, default_color(0))]
            for info in classes:
                node.GetSegmentation().AddEmptySegment(info.name, info.name, list(info.color))
            entry.labels = node
        return entry.labels

    def labelled_voxels(self, volume_id: str) -> int:
        """Voxels in the person's labels; counted again only after the labels changed."""
        entry = self._entry(volume_id)
        if entry.labels is None:
            return 0
        stamp = entry.labels.GetSegmentation().GetMTime()
        if entry.voxel_count is None or entry.voxel_count[0] != stamp:
            entry.voxel_count = (stamp, _voxel_count(entry.labels, entry.volume))
        return entry.voxel_count[1]

    def refresh_roles(self) -> None:
        """After painting: a volume with labelled voxels becomes labelled (unless excluded)."""
        for entry in self.entries.values():
            self._update_role(entry)

    def _update_role(self, entry: Entry) -> None:
        if entry.excluded_by_person or entry.notes:
            entry.role = EXCLUDED
        elif entry.labels is not None and self.labelled_voxels(entry.volume.GetID()):
            entry.role = LABELLED
        else:
            entry.role = UNLABELLED

    def _entry(self, volume_id: str) -> Entry:
        if volume_id not in self.entries:
            raise InputError(f"no volume {volume_id!r} in this session")
        return self.entries[volume_id]

    # ---------------------------------------------------------------- training
    def start_training(self, method: str, network: str, preset: str | None, iterations: int,
                       extra_args: list[str] | None = None, **settings) -> jobs.Job:
        """Round 1 on the labelled and unlabelled volumes, in the logic's child process."""
        self._require_idle()
        self.refresh_roles()
        labelled = [(e.volume, e.labels) for e in self.entries.values() if e.role == LABELLED]
        unlabelled = [e.volume for e in self.entries.values() if e.role == UNLABELLED]
        if not unlabelled:
            raise InputError("No unlabelled volume: results need at least one volume to predict "
                             "(set a volume's role to unlabelled)")
        self.job = self.logic.startTraining(labeled=labelled, unlabeled=unlabelled, method=method, network=network,
                                            preset=None if preset in (None, "", "auto") else preset,
                                            iterations=int(iterations), extraArgs=list(extra_args or ()),
                                            **settings)
        return self.job

    def retrain(self, iterations: int | None = None) -> jobs.Job:
        """A new round from the last model, with the predictions a person marked corrected."""
        self._require_idle()
        if self.job is None:
            raise InputError("Train a model first: there is no round to retrain from")
        corrected = self.logic.correctedPredictions(self.job)
        if not corrected:
            raise InputError("No corrected prediction: edit a prediction, then mark it corrected")
        self.job = self.logic.retrain(self.job, corrected=corrected, iterations=iterations)
        return self.job

    def resume(self) -> jobs.Job:
        """Go on with the round where it stopped (cancelled, or its process killed)."""
        self._require_idle()
        if self.job is None:
            raise InputError("No round to resume: train first")
        self.job = self.logic.resumeRound(self.job)
        return self.job

    def past_rounds(self) -> list[dict]:
        """The latest round of each job under the jobs folder, newest first (what Open lists)."""
        return jobs.past_rounds(self.logic.jobsRoot)

    def open_round(self, folder: str | os.PathLike) -> jobs.Job:
        """Take up a job's latest round again, after the server restarted: its state, its
        results, Resume round, or its progress while its process still trains. Its cases are
        linked to this session's volumes by content, so the scans must be loaded (the same
        files, or copies) for its predictions to land. Only a job folder of the jobs folder
        opens: the page names the folder, and a page is not trusted with the server's disk."""
        self._require_idle()
        root = Path(self.logic.jobsRoot).resolve()
        folder = Path(folder).resolve()
        if folder.parent != root or not (folder / "job.json").is_file():
            raise InputError(f"{folder.name}: not a job of the jobs folder {root}")
        self.job = self.logic.openJob(folder)
        for entry in self.entries.values():
            entry.prediction = None  # another round's
        return self.job

    def linked_cases(self) -> tuple[int, int]:
        """``(cases whose scan is in this session, cases)`` of the open job."""
        cases = self.job.folder.read_job().get("cases", {}) if self.job else {}
        linked = sum(1 for case in cases.values() if case.get("volumeNodeID") in self.entries)
        return linked, len(cases)

    def _require_idle(self) -> None:
        if self.job is not None and not self.job.finished:
            raise InputError("A training round is running: wait for it or cancel it")

    def cancel(self) -> None:
        if self.job is not None and not self.job.finished:
            self.job.cancel()

    def poll(self) -> dict:
        """The job's state for the Train panel (reads the child's progress file; never blocks)."""
        if self.job is None:
            return {"state": "idle", "fraction": 0.0, "text": "No training yet", "resumable": False}
        self.job.poll()
        step = self.job.training_progress or {}
        losses = step.get("losses") or {}
        loss = losses.get("main", losses.get("loss", next(iter(losses.values()), None))) if losses else None
        return {"state": self.job.state, "round": self.job.round, "fraction": self.job.fraction_done(),
                "iteration": step.get("iteration"), "total": step.get("total"),
                "eta": jobs.format_duration(self.job.eta_s()), "loss": loss, "dice": self.job.latest_val_dice(),
                "error": self.job.error, "text": jobs.status_text(self.job),
                "resumable": self.job.resumable}

    # ---------------------------------------------------------------- results
    def load_results(self) -> list[dict]:
        """Load the round's predictions (new nodes); rows, least confident first."""
        if self.job is None or self.job.state != jobs.DONE:
            raise InputError("No finished round: train first")
        loaded = self.logic.loadPredictions(self.job)
        for volume_id, node in loaded.items():
            if volume_id in self.entries:
                self.entries[volume_id].prediction = node
        return self.result_rows()

    def result_rows(self) -> list[dict]:
        rows = [row for row in self.rows() if self.entries[row["id"]].prediction is not None]
        return sorted(rows, key=lambda r: (r["confidence"] is None, r["confidence"] or 0.0))

    def mark_corrected(self, volume_id: str, corrected: bool = True) -> None:
        entry = self._entry(volume_id)
        if entry.prediction is None:
            raise InputError(f"{entry.volume.GetName()} has no prediction to mark")
        self.logic.setCorrected(entry.prediction, corrected)

    def export(self, folder: str | os.PathLike, file_format: str = "seg.nrrd") -> Path:
        """Every loaded prediction (latest round) plus the manifest; the manifest's path."""
        if self.job is None:
            raise InputError("Nothing to export: train and load results first")
        if not self.logic.predictionNodes(self.job):
            raise InputError("Nothing to export: load the results first")
        return self.logic.exportResults(self.job, folder, fileFormat=file_format)


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"--labels {folder}: not a folder")
    return {image_name(p): p for p in sorted(folder.iterdir())
            if p.name.lower().endswith(IMAGE_SUFFIXES + (".seg.nrrd",))}


def _voxel_count(segmentation, volume) -> int:
    """Labelled voxels of all segments (binary labelmap representation)."""
    total = 0
    for segment_id in segmentation.GetSegmentation().GetSegmentIDs():
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
        total += int(np.count_nonzero(array)) if array is not None else 0
    return total
