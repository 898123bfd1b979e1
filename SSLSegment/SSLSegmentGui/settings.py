"""Application settings (QSettings) that outlive the scene: the last method, network, preset,
device and jobs folder, as MONAI Label and SlicerNNUnet keep theirs.

A scene keeps its own values in its parameter node; these only fill a new parameter node.
"""

import pathlib

import qt

GROUP = "SSLSegment"
KEPT = ("method", "network", "preset", "device", "jobsDirectory")


def restore(parameterNode) -> None:
    """Give a new parameter node the last values used (values no longer valid are skipped)."""
    settings = qt.QSettings()
    for name in KEPT:
        value = settings.value(f"{GROUP}/{name}")
        if not value:
            continue
        try:
            setattr(parameterNode, name, pathlib.Path(value) if name == "jobsDirectory" else str(value))
        except Exception:  # e.g. a method this version no longer offers: keep the default
            continue


def save(parameterNode) -> None:
    if parameterNode is None:
        return
    settings = qt.QSettings()
    for name in KEPT:
        settings.setValue(f"{GROUP}/{name}", str(getattr(parameterNode, name)))
