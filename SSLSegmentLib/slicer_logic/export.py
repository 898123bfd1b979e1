"""Writing the scene's volumes and segmentations to files: the job folder's cases, and exported results with a manifest."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
from pathlib import Path
from typing import Sequence

import slicer
import vtk

from .. import jobs
from ..errors import InputError
from ..fileio import atomic_path, atomic_write_json
from ..mrml import (
    referenceVolume, requireLabelledVoxels, resampleToVolume, segmentNames, volumeFingerprint, writeVolume,
)
from .markings import ATTR_CONFIDENCE, ATTR_ROUND, _floatOrNone

LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".nhdr")


class ExportMixin:
    """Cases into the job folder; segmentations and results out to files."""

    def _exportCase(self, folder: jobs.JobFolder, round_number: int, name: str, volume, segmentation,
                    classes: list[dict], exportImage: bool = True) -> dict:
        """Write a case's image (and label) into the job folder; the case entry (relative paths)."""
        image = folder.images_dir / f"{name}.nrrd"
        case = {"image": image.relative_to(folder.root).as_posix(), "label": None, "corrected": False,
                "volumeNodeID": volume.GetID(), "volumeName": volume.GetName(),
                "volumeFingerprint": volumeFingerprint(volume)}
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


def _nodeIDs(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
