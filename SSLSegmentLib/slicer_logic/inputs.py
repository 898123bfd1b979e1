"""Checks of the volumes and segmentations given to train, with a clear message for each problem."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..data.class_names import class_key, display_name
from ..errors import InputError
from ..mrml import geometryMismatch, segmentNames, segments, unplaceableWithoutReference


class InputChecksMixin:
    """Input checks and the classes of the given segmentations."""

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
