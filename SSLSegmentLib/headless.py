"""A real MRML scene without the Slicer application (PyPI ``slicer-core`` wheel).

Inside Slicer the application creates the scene and registers the module logics; outside
it nobody does, so :func:`slicer_scene` does that part: an application logic on a new
scene, with the Colors, Volumes, Segmentations and Subject hierarchy logics registered.
The same :class:`SSLSegmentLib.logic.SSLSegmentLogic` then runs in tests and on servers on
the real MRML library rather than on a mock (the approach of KitwareMedical/SlicerCore and
trame-slicer).

Not available without the application: ``qt``, ``ctk``, ``slicer.app``,
``slicer.util.saveNode`` and ``loadVolume`` (they need ``slicer.app``); use storage nodes.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import slicer
import vtk

#: (name the logic is registered under, slicer-core class, name under ``slicer.modules``)
_MODULE_LOGICS = (
    ("Colors", "vtkSlicerColorLogic", "colors"),
    ("Volumes", "vtkSlicerVolumesLogic", "volumes"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic", "segmentations"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic", "subjecthierarchy"),
)


def slicer_scene(set_globals: bool = True):
    """A new MRML scene set up as the Slicer application would set it up.

    Parameters
    ----------
    set_globals:
        Also set ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``, which a few
        ``slicer.util`` helpers read. Never done inside the Slicer application (it would
        replace the application's scene).
    """
    if in_slicer_application():
        raise RuntimeError("slicer_scene() is for use outside Slicer: use slicer.mrmlScene there")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}
    for name, class_name, _ in _MODULE_LOGICS:
        logic = getattr(slicer, class_name)()
        logic.SetMRMLApplicationLogic(app_logic)
        with _quiet_vtk():  # the colour logic reports it has no colour files: expected here
            logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    # Keep the logics alive as long as the scene: VTK would otherwise delete them.
    scene._ssl_segment_logics = (app_logic, logics)
    if set_globals:
        _set_slicer_globals(scene, logics)
    return scene


@contextlib.contextmanager
def _quiet_vtk():
    previous = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(previous)


def in_slicer_application() -> bool:
    """True inside the Slicer application (``slicer.app`` exists)."""
    return hasattr(slicer, "app")


def _set_slicer_globals(scene, logics: dict) -> None:
    slicer.mrmlScene = scene
    modules = getattr(slicer, "modules", None) or SimpleNamespace()
    for name, _, attribute in _MODULE_LOGICS:
        setattr(modules, attribute, SimpleNamespace(logic=lambda logic=logics[name]: logic))
    slicer.modules = modules
