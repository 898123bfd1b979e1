"""MRML nodes to and from files, and the geometry and hierarchy checks the logic needs.

Slicer's own storage nodes and logics do the work, so files read and written here are
exactly what the Slicer application reads and writes. Imports ``slicer`` (MRML), never ``qt``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import slicer
import vtk

from .errors import InputError
from .fileio import atomic_path

GEOMETRY_TOLERANCE = 1e-3  # relative, as Geometry.matches in the engine


def writeVolume(volumeNode, path: str | os.PathLike) -> None:
    """Write a volume (or labelmap) with Slicer's own storage node, atomically."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(True)
    with atomic_path(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(volumeNode):
            raise OSError(f"could not write {path}")


def readVolume(scene, path: str | os.PathLike, labelmap: bool = False):
    """Read a volume file into a new node of ``scene`` (``slicer.util.loadVolume`` needs the app)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                   Path(path).name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"could not read {path}")
    return node


FINGERPRINT_ATTRIBUTE = "SSLSegment.Fingerprint"


def volumeFingerprint(volumeNode) -> str | None:
    """SHA-256 of a volume's voxels (type, shape, values) and of its geometry (IJK to RAS,
    rounded to 1e-4 mm): what identifies a scan when its node ID no longer does (another
    session). None for a volume without image data.

    Kept on the node with the voxels' modification time and the geometry it was computed for,
    so opening a job again (or going back to another round) hashes only the volumes changed
    since; a voxel edit (``Modified()`` on the image data) or a new geometry computes it again."""
    imageData = volumeNode.GetImageData()
    voxels = slicer.util.arrayFromVolume(volumeNode) if imageData is not None else None
    if voxels is None:
        return None
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    geometry = np.round([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], 4) + 0.0  # no -0.0
    header = f"{voxels.dtype.str} {voxels.shape} {geometry.tolist()}"
    computedFor = f"{imageData.GetMTime()} {header}"
    kept = (volumeNode.GetAttribute(FINGERPRINT_ATTRIBUTE) or "").rsplit(" ", 1)
    if len(kept) == 2 and kept[0] == computedFor:
        return kept[1]
    digest = hashlib.sha256(header.encode())
    digest.update(memoryview(np.ascontiguousarray(voxels)).cast("B"))  # no copy of a contiguous array
    volumeNode.SetAttribute(FINGERPRINT_ATTRIBUTE, f"{computedFor} {digest.hexdigest()}")
    return digest.hexdigest()


def fileFingerprint(path: str | os.PathLike) -> str | None:
    """:func:`volumeFingerprint` of the volume file at ``path``, read into a node outside any
    scene (nothing is added to the user's scene); None when it cannot be read."""
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node):
        return None
    return volumeFingerprint(node)


def readSegmentation(scene, path: str | os.PathLike, referenceVolumeNode=None):
    """Read a ``.seg.nrrd`` into a new segmentation node (as Slicer does)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", Path(path).name.split(".")[0])
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"could not read {path}")
    node.CreateDefaultDisplayNodes()
    if referenceVolumeNode is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    return node


def resampleToVolume(segmentationNode, volumeNode) -> None:
    """Resample a segmentation's labelmaps to exactly the volume's grid (Slicer's geometry logic)."""
    geometry = slicer.vtkSlicerSegmentationGeometryLogic()
    geometry.SetInputSegmentationNode(segmentationNode)
    geometry.SetSourceGeometryNode(volumeNode)
    geometry.SetOversamplingFactor(1.0)
    geometry.SetIsotropicSpacing(False)
    error = geometry.CalculateOutputGeometry()
    if error:
        raise InputError(f"segmentation '{segmentationNode.GetName()}': {error}")
    geometry.SetReferenceImageGeometryInSegmentationNode()
    if not geometry.ResampleLabelmapsInSegmentationNode():
        raise InputError(f"could not resample segmentation '{segmentationNode.GetName()}' to the volume")


def referenceVolume(segmentationNode):
    """The volume a segmentation was drawn on: its reference geometry node, else its SH parent."""
    node = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
    if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
        return node
    scene = segmentationNode.GetScene()
    sh = scene.GetSubjectHierarchyNode() if scene else None
    if sh is None:
        return None
    item = sh.GetItemByDataNode(segmentationNode)
    parent = sh.GetItemDataNode(sh.GetItemParent(item)) if item else None
    return parent if parent is not None and parent.IsA("vtkMRMLScalarVolumeNode") else None


def geometryMismatch(segmentationNode, volumeNode) -> str | None:
    """Why the segmentation's reference geometry differs from the volume's (None if it matches or is unset)."""
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    serialized = segmentationNode.GetSegmentation().GetConversionParameter(parameter)
    if not serialized:
        return None
    values = [float(v) for v in serialized.strip(";").split(";")]
    if len(values) != 22:
        return None
    matrix = np.array(values[:16]).reshape(4, 4)
    extent = [int(round(v)) for v in values[16:]]
    volume_matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(volume_matrix)
    volume_array = np.array([[volume_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    size = [extent[2 * i + 1] - extent[2 * i] + 1 for i in range(3)]
    volume_size = list(volumeNode.GetImageData().GetDimensions())
    if size != volume_size:
        return f"size {size} vs {volume_size} voxels"
    scale = max(np.abs(volume_array[:3, :3]).max(), 1e-6)
    if np.abs(matrix[:3, :3] - volume_array[:3, :3]).max() > GEOMETRY_TOLERANCE * scale:
        return "different spacing or orientation"
    if np.abs(matrix[:3, 3] - volume_array[:3, 3]).max() > GEOMETRY_TOLERANCE * max(scale, 1.0) * 10:
        return "different origin"
    return None


def placeUnder(node, parentNode) -> None:
    """Put ``node`` under ``parentNode`` in the subject hierarchy (items made if missing: headless)."""
    sh = node.GetScene().GetSubjectHierarchyNode()
    parent_item = sh.GetItemByDataNode(parentNode) or sh.CreateItem(sh.GetSceneItemID(), parentNode)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent_item)
    else:
        sh.CreateItem(parent_item, node)


def segments(segmentationNode) -> list:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]


def segmentNames(segmentationNode) -> list[str]:
    return [s.GetName() for s in segments(segmentationNode)]


def requireLabelledVoxels(labelmapNode, segmentationNode) -> None:
    array = slicer.util.arrayFromVolume(labelmapNode)
    if not np.any(array):
        raise InputError(f"Segmentation '{segmentationNode.GetName()}' has no labelled voxel inside its volume "
                         "(empty segments, or drawn outside the volume).")


def nodesByClass(scene, className: str) -> list:
    collection = scene.GetNodesByClass(className)
    nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return nodes


def segmentationFromLabelArray(scene, volumeNode, label: np.ndarray, classes, name: str | None = None):
    """A new segmentation of ``volumeNode`` with one named, coloured segment per class:
    voxels of ``label`` (KJI, as ``arrayFromVolume``) equal to i+1 form ``classes[i]``."""
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volumeNode.GetName()} labels")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    for value, info in enumerate(classes, start=1):
        segmentId = segmentation.GetSegmentation().AddEmptySegment("", info.name, list(info.color))
        slicer.util.updateSegmentBinaryLabelmapFromArray((label == value).astype(np.uint8), segmentation,
                                                        segmentId, volumeNode)
    return segmentation


def hasReferenceGeometry(segmentationNode) -> bool:
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    return bool(segmentationNode.GetSegmentation().GetConversionParameter(parameter))


def unplaceableWithoutReference(segmentationNode, volumeNode) -> str | None:
    """Why a segmentation WITHOUT reference geometry cannot be exported onto ``volumeNode``
    (None when it has one, or when its labelmaps lie on the volume's grid, as a ``.seg.nrrd``
    written for that volume does). Resampling such a segmentation makes up a grid (e.g. a
    0.04 mm one for a closed surface) that comes out one voxel off the volume."""
    if hasReferenceGeometry(segmentationNode):
        return None
    segmentation = segmentationNode.GetSegmentation()
    labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segmentation.GetSourceRepresentationName() != labelmapName:
        return f"its segments are stored as {segmentation.GetSourceRepresentationName()}, not drawn on a volume"
    volumeMatrix = _matrixArray(volumeNode.GetIJKToRASMatrix)
    for segment in segments(segmentationNode):
        labelmap = segment.GetRepresentation(labelmapName)
        if labelmap is None or labelmap.IsEmpty():
            continue
        labelmapMatrix = _matrixArray(labelmap.GetImageToWorldMatrix)
        scale = max(np.abs(volumeMatrix[:3, :3]).max(), 1e-6)
        offset = np.linalg.solve(volumeMatrix[:3, :3], labelmapMatrix[:3, 3] - volumeMatrix[:3, 3])
        if (np.abs(labelmapMatrix[:3, :3] - volumeMatrix[:3, :3]).max() > GEOMETRY_TOLERANCE * scale
                or np.abs(offset - np.round(offset)).max() > 1e-2):
            return f"segment '{segment.GetName()}' is not on the voxel grid of the volume"
    return None


def _matrixArray(getter) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
