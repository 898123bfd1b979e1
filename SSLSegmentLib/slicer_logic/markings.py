"""What SSLSegment writes on the nodes it creates, and the roles volumes have in the Data table."""

from __future__ import annotations

from .. import jobs
from ..mrml import nodesByClass, referenceVolume, segmentNames

# Node attributes that mark what SSLSegment created (read back by the widget and exports).
ATTR_JOB = "SSLSegment.JobFolder"
ATTR_ROUND = "SSLSegment.Round"
ATTR_CASE = "SSLSegment.Case"
ATTR_ROLE = "SSLSegment.Role"  # "prediction"
ATTR_CORRECTED = "SSLSegment.Corrected"  # "true" once a person approved/edited it
ATTR_CONFIDENCE = "SSLSegment.Confidence"
ATTR_OUT_OF_DOMAIN = "SSLSegment.OutOfDomain"  # why the image lies far outside the training images (confidence 0)

#: Roles a volume can have in the Data table.
LABELLED, UNLABELLED, EXCLUDED = "labelled", "unlabelled", "excluded"


class MarkingsMixin:
    """Prediction markings (corrected or not) and the role each volume of the scene has."""

    @staticmethod
    def setCorrected(segmentationNode, corrected: bool = True) -> None:
        """Mark a prediction as approved/edited by a person: only then may it train."""
        segmentationNode.SetAttribute(ATTR_CORRECTED, "true" if corrected else "false")

    @staticmethod
    def isCorrected(segmentationNode) -> bool:
        return segmentationNode.GetAttribute(ATTR_CORRECTED) == "true"

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


def _floatOrNone(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
