"""Loading a round's predictions into the scene, and their confidence."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import slicer

from .. import jobs
from ..data.class_names import class_key
from ..errors import InputError
from ..mrml import fileFingerprint, nodesByClass, placeUnder, segments, volumeFingerprint
from .markings import (
    ATTR_CASE, ATTR_CONFIDENCE, ATTR_CORRECTED, ATTR_JOB, ATTR_OUT_OF_DOMAIN, ATTR_ROLE, ATTR_ROUND, _floatOrNone,
)

log = logging.getLogger("SSLSegmentLib.logic")


class ResultsMixin:
    """Predictions into the scene; confidence, history and the Results table's rows."""

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

    def relinkVolumes(self, folder: jobs.JobFolder) -> dict[str, str | None]:
        """Link the job's cases to this scene's volumes by content, not by node ID.

        After Slicer restarted and the scans were loaded again (the scene not saved), the node
        IDs that ``job.json`` names belong to other volumes or to none: predictions went
        nowhere, or onto another scan that happened to get the same ID and name. Each case is
        linked to the volume of its name whose voxels and geometry are the case's (its
        fingerprint, or the job's copy of the image for older jobs); ``job.json`` remembers
        the new IDs, and a case whose scan is not in the scene is linked to none.
        ``{case: new node ID or None}`` for the cases whose link changed."""
        job_info = folder.read_job()
        unknown = [name for name, case in job_info["cases"].items() if "volumeFingerprint" not in case]
        taken, changed = set(), {}
        for name, case in job_info["cases"].items():
            volume = self._volumeOfCase(job_info, name)
            candidates = [volume] if volume is not None else []
            candidates += [v for v in nodesByClass(self.scene, "vtkMRMLScalarVolumeNode")
                           if v.GetName() == case.get("volumeName") and v is not volume
                           and not v.IsA("vtkMRMLLabelMapVolumeNode")]
            match = next((v for v in candidates if v.GetID() not in taken and self._isCaseVolume(folder, case, v)),
                         None)
            linked = match.GetID() if match is not None else None
            if linked is not None:
                taken.add(linked)
            if linked != case.get("volumeNodeID"):
                case["volumeNodeID"] = changed[name] = linked
        if changed or any(job_info["cases"][name].get("volumeFingerprint") for name in unknown):
            folder.write_job(job_info)  # the new links, and the fingerprints read from older jobs' copies
            log.info("SSLSegment: job %s relinked to this scene's volumes: %s", folder.root, changed)
        return changed

    @staticmethod
    def _isCaseVolume(folder: jobs.JobFolder, case: dict, volume) -> bool:
        expected = case.get("volumeFingerprint")
        if expected is None:  # a job written before fingerprints: its copy of the image
            expected = fileFingerprint(folder.root / case["image"]) if case.get("image") else None
            case["volumeFingerprint"] = expected
        return expected is not None and volumeFingerprint(volume) == expected

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
