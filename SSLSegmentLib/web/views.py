"""Slice views (default) and an optional 3D view, on trame-slicer's remote-rendered views.

With software rendering (Mesa through EGL) a 3D volume rendering costs 0.5-2 s a frame on
a 2-core machine, so the page opens on three slice views; the 3D view, when asked for,
shows the segments as surfaces, not the volume. Slice positions are snapped to voxel
centres: a paint stroke at a position between two voxel centres can land on the
neighbouring slice.
"""

from __future__ import annotations

from trame_slicer.core import LayoutManager
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

SLICES = "Slices"
SLICES_AND_3D = "Slices and 3D"


def layouts() -> dict[str, Layout]:
    axial, coronal, sagittal = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                                ViewLayoutDefinition.sagittal_view())
    threed = ViewLayoutDefinition.threed_view()
    def even(n):  # flex basis 0: the views share the space, whatever their image's size
        return ["1 1 0%"] * n

    return {
        SLICES: Layout(LayoutDirection.Horizontal,
                       [axial, Layout(LayoutDirection.Vertical, [coronal, sagittal], even(2))], ["2 1 0%", "1 1 0%"]),
        SLICES_AND_3D: Layout(LayoutDirection.Horizontal,
                              [axial, Layout(LayoutDirection.Vertical, [threed, coronal, sagittal], even(3))],
                              ["2 1 0%", "1 1 0%"]),
    }


class Views:
    """What the views show: one volume, its labels or prediction as an overlay, optional 3D."""

    def __init__(self, slicer_app, server):
        self.slicer_app = slicer_app
        register_rca_factories(slicer_app.view_manager, server)
        self.layout_manager = LayoutManager(slicer_app.scene, slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict(layouts())
        self.layout_manager.set_layout(SLICES)
        self.show_3d = False
        self._snapping = False
        self._connected: set[int] = set()
        self._sizes: tuple = ()

    @property
    def slice_views(self) -> list:
        return self.slicer_app.view_manager.get_slice_views()

    def show(self, volume, overlays=()) -> None:
        """``volume`` in every slice view, only ``overlays`` (segmentations) visible."""
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        visible = {node.GetID() for node in overlays if node is not None}
        scene = self.slicer_app.scene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
            shown = node.GetID() in visible
            node.CreateDefaultDisplayNodes()
            display_node = node.GetDisplayNode()
            display_node.SetVisibility(shown)
            display_node.SetVisibility2DFill(True)
            display_node.SetOpacity2DFill(0.5)
            display_node.SetVisibility3D(shown and self.show_3d)
            if shown and self.show_3d:
                node.CreateClosedSurfaceRepresentation()
        display.reset_views()
        self.snap_slices()
        self._connect_snapping()

    def set_3d(self, enabled: bool, overlays=()) -> None:
        """The optional 3D view: segment surfaces (not volume rendering: too slow in software)."""
        self.show_3d = bool(enabled)
        self.layout_manager.set_layout(SLICES_AND_3D if self.show_3d else SLICES)
        for node in overlays:
            if node is None:
                continue
            if self.show_3d:
                node.CreateClosedSurfaceRepresentation()
            node.GetDisplayNode().SetVisibility3D(self.show_3d)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        self._connect_snapping()

    def snap_slices(self) -> None:
        """Put every slice view's position on a voxel centre of its background volume."""
        if self._snapping:
            return
        self._snapping = True
        try:
            for view in self.slice_views:
                slice_logic(view).SnapSliceOffsetToIJK()
        finally:
            self._snapping = False

    def _connect_snapping(self) -> None:
        """Snap again after every slider move (the views emit ``modified``)."""
        for view in self.slice_views:
            if id(view) not in self._connected:
                view.modified.connect(lambda *_: self.snap_slices())
                self._connected.add(id(view))

    def fit_if_resized(self) -> None:
        """Fit the slices to their view once the browser has given the views their size."""
        sizes = tuple(tuple(view.render_window().GetSize()) for view in self.slice_views)
        if sizes != self._sizes:
            self._sizes = sizes
            for view in self.slice_views:
                view.fit_view_to_content()
            self.snap_slices()

    def slice_offsets(self) -> dict[str, float]:
        return {view.get_orientation(): view.get_slice_value() for view in self.slice_views}

    def render_all(self) -> None:
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()


def slice_logic(view):
    """The vtkMRMLSliceLogic of a trame-slicer slice view (it keeps it private)."""
    return view._logic  # noqa: SLF001
