"""Helpers and fixtures for the data / preprocessing tests (imported by those test files)."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from SSLSegmentLib.data import ClassInfo, Geometry, write_image, write_labelmap, write_segmentation

_c, _s = math.cos(0.3), math.sin(0.3)
ROTATED_DIRECTION = (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0)


def rotated_geometry(shape_zyx=(6, 8, 10), spacing=(0.8, 1.1, 2.5), origin=(3.0, -4.0, 10.0)) -> Geometry:
    """A grid with anisotropic spacing, an offset origin and a rotated direction."""
    return Geometry.from_array_shape(shape_zyx, spacing, origin, ROTATED_DIRECTION)


def two_box_label(shape_zyx=(6, 8, 10)) -> np.ndarray:
    """Labelmap with value 1 in a box at low z and value 2 in a box at high z."""
    label = np.zeros(shape_zyx, dtype=np.uint8)
    label[1:3, 2:5, 2:6] = 1
    label[3:5, 3:6, 4:8] = 2
    return label


def write_case(images: Path, labels: Path | None, name: str, geometry: Geometry,
               label: np.ndarray | None = None, classes: list[ClassInfo] | None = None,
               label_ext: str = ".seg.nrrd", image_ext: str = ".nrrd") -> None:
    """Write ``<name><image_ext>`` (random image) and, with ``labels``, its label."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # str hash() changes per process
    write_image(images / f"{name}{image_ext}", rng.normal(size=geometry.shape_zyx).astype(np.float32), geometry)
    if labels is None:
        return
    label = two_box_label(geometry.shape_zyx) if label is None else label
    if label_ext == ".seg.nrrd":
        write_segmentation(labels / f"{name}{label_ext}", label, geometry, classes or [ClassInfo("LV"), ClassInfo("RV")])
    else:
        write_labelmap(labels / f"{name}{label_ext}", label, geometry)


# --- real 3D Slicer files, written by slicer-core's own storage node --------------------------

class SlicerScene:
    """Headless MRML scene with the Segmentations logic registered, as the Slicer application
    would set it up (see shared/reference/slicer-anchors.md)."""

    def __init__(self):
        import slicer
        self.slicer = slicer
        self.scene = slicer.vtkMRMLScene()
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(self.scene)
        self.segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations_logic.SetMRMLScene(self.scene)
        self.segmentations_logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic("Segmentations", self.segmentations_logic)
        self._app_logic = app_logic  # keep alive

    def labelmap_node(self, mask_zyx: np.ndarray, geometry: Geometry):
        """Labelmap volume node of a (z, y, x) array; Slicer nodes are RAS, our geometry LPS."""
        import vtk
        from vtk.util import numpy_support
        node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        image = vtk.vtkImageData()
        image.SetDimensions(*geometry.size)
        scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_zyx, dtype=np.uint8).ravel(), deep=True,
                                             array_type=vtk.VTK_UNSIGNED_CHAR)
        image.GetPointData().SetScalars(scalars)
        node.SetAndObserveImageData(image)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        matrix = vtk.vtkMatrix4x4()
        for row, values in enumerate(lps_to_ras @ geometry.direction_matrix):
            for column, value in enumerate(values):
                matrix.SetElement(row, column, value)
        node.SetIJKToRASDirectionMatrix(matrix)
        node.SetSpacing(*geometry.spacing)
        node.SetOrigin(*(lps_to_ras @ np.array(geometry.origin)))
        return node

    def write_segmentation(self, path: Path, masks: dict[str, np.ndarray], geometry: Geometry) -> None:
        """Write ``masks`` (name -> bool zyx) as Slicer does; overlapping masks go to layers."""
        import vtk
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.labelmap_node(np.zeros(geometry.shape_zyx), geometry))
        for index, (name, mask) in enumerate(masks.items()):
            segment_id = node.GetSegmentation().AddEmptySegment(name, name, [0.1 * index, 0.5, 0.9])
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            assert self.segmentations_logic.ImportLabelmapToSegmentationNode(self.labelmap_node(mask, geometry), node, ids)
        storage = self.slicer.vtkMRMLSegmentationStorageNode()
        self.scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.WriteData(node)

    def read_segmentation(self, path: Path) -> dict[str, tuple[int, tuple, str]]:
        """Segment name -> (voxel count, colour, terminology), as Slicer reads the file."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = self.slicer.vtkMRMLSegmentationStorageNode()
        self.scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
        segmentation = node.GetSegmentation()
        segments = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segment_id)
            segments[segment.GetName()] = (self._voxel_count(node, segment_id), tuple(segment.GetColor()),
                                           segment.GetTerminology())
        return segments

    def _voxel_count(self, node, segment_id) -> int:
        from vtk.util import numpy_support
        labelmap = self.slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segment_id, labelmap)  # 0/1 image of this segment
        scalars = labelmap.GetPointData().GetScalars()
        return 0 if scalars is None else int((numpy_support.vtk_to_numpy(scalars) > 0).sum())


@pytest.fixture(scope="module")
def slicer_scene():
    """A headless Slicer scene, or skip when slicer-core is not installed."""
    pytest.importorskip("slicer")
    try:
        return SlicerScene()
    except AttributeError as error:  # a slicer-core build without the Segmentations module
        pytest.skip(f"slicer-core lacks the segmentation classes: {error}")
