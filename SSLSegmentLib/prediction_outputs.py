"""Which files of a folder did ``predict`` write, and for which model?

``predict`` records every file it writes in ``.sslsegment-predictions.json`` (path -> model
fingerprint and SHA-256 of the bytes) and marks each NRRD it writes with the header field
``SSLSegment_Prediction:=<model fingerprint>``. From that:

- a file in ``--out`` is replaced only when this tool wrote it for the same model and nobody
  changed it since; anything else (a person's own ``<case>.seg.nrrd``, an edited prediction,
  another model's output) is refused unless ``--overwrite`` is given;
- this project's own outputs are recognised when a folder is read for training or prediction,
  and kept out of the image and label sets: predictions never become training data by accident.
  A prediction that a person edited and saved again (its bytes changed, Slicer drops the
  header field) counts as a person's label.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import SimpleITK as sitk

from .errors import InputError, OutputError
from .fileio import atomic_write_json, file_sha256

MANIFEST_NAME = ".sslsegment-predictions.json"
MARKER_FIELD = "SSLSegment_Prediction"
LABELMAP_FOLDER = "labelmaps"

log = logging.getLogger("sslsegment.data")


def model_fingerprint(network, classes) -> str:
    """A short identity of a model: SHA-256 of its weights and class names."""
    digest = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([c.name for c in classes]).encode())
    return digest.hexdigest()[:16]


def prepare_output_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` and prove it writable now, before any case is predicted; OutputError
    naming it and the fix otherwise (a file in the way, read-only, no permission)."""
    folder = Path(folder)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{folder}: cannot be the output folder: {blocker} is a file; choose another {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as error:
        raise OutputError(f"{folder}: cannot write into the output folder ({error.strerror}); choose a writable "
                          f"{option}, or fix its permissions") from error
    return folder


class OutputManifest:
    """The record of the files ``predict`` wrote into one folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.files: dict[str, dict] = _read_manifest(self.path)

    def written_by_us(self, relative: str, model: str | None = None) -> bool:
        """True when ``relative`` is recorded (for ``model``, if given) and unchanged since."""
        entry = self.files.get(relative)
        path = self.folder / relative
        if not entry or (model is not None and entry.get("model") != model) or not path.is_file():
            return False
        return entry.get("sha256") == file_sha256(path)

    def conflicts(self, relatives: list[str], model: str) -> list[Path]:
        """Existing files among ``relatives`` that this tool did not write for ``model``."""
        return [self.folder / r for r in relatives if (self.folder / r).exists() and not self.written_by_us(r, model)]

    def record(self, relative: str, model: str) -> None:
        self.files[relative] = {"model": model, "sha256": file_sha256(self.folder / relative)}
        atomic_write_json(self.path, {"written_by": "sslsegment predict", "files": self.files})


def _read_manifest(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in files.items() if isinstance(v, dict)}
    except (OSError, ValueError):  # none yet, or damaged: then nothing counts as ours (the safe side)
        return {}


def refuse_conflicts(manifest: OutputManifest, relatives: list[str], model: str) -> None:
    conflicts = manifest.conflicts(relatives, model)
    if conflicts:
        shown = ", ".join(str(p) for p in conflicts[:10])
        shown += f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        raise OutputError(f"{manifest.folder}: {len(conflicts)} file(s) there were not written by this model's "
                          f"predictions (a person's segmentation, an edited prediction, or another model's): {shown}. "
                          "Nothing was written. Choose another --out, or give --overwrite to replace them")


def has_prediction_marker(path: Path) -> bool:
    """True when an NRRD's header carries the marker that ``predict`` writes (header only)."""
    if not path.name.lower().endswith(".nrrd"):
        return False
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader.HasMetaDataKey(MARKER_FIELD)
    except RuntimeError:
        return False  # unreadable: its reader will say so


def is_prediction_output(path: Path, manifests: dict[Path, OutputManifest] | None = None) -> bool:
    """Did ``predict`` write this file (and nobody change it since)?"""
    manifests = {} if manifests is None else manifests
    for folder in (path.parent, path.parent.parent):
        if (folder / MANIFEST_NAME).is_file():
            manifest = manifests.setdefault(folder, OutputManifest(folder))
            if manifest.written_by_us(path.relative_to(folder).as_posix()):
                return True
    return has_prediction_marker(path)


def without_prediction_outputs(files: list[Path], role: str) -> list[Path]:
    """``files`` less this project's own predictions, each named in a warning."""
    manifests: dict[Path, OutputManifest] = {}
    kept, skipped = [], []
    for path in files:
        (skipped if is_prediction_output(path, manifests) else kept).append(path)
    for path in skipped:
        log.warning("%s: skipped as %s: it is a prediction written by `sslsegment predict`, not a person's data "
                    "(open it in Slicer, correct it and save it under another name to use it)", path, role)
    return kept


def require_outputs_writable(folder: Path, case_names: list[str], model: str, overwrite: bool) -> OutputManifest:
    """The folder's manifest, after refusing (without --overwrite) to replace foreign files."""
    if not case_names:
        raise InputError("no case to predict")
    manifest = OutputManifest(prepare_output_folder(folder))
    if not overwrite:
        refuse_conflicts(manifest, [r for name in case_names for r in output_files(name)], model)
    return manifest


def output_files(case: str) -> list[str]:
    """The files ``predict`` writes for one case, relative to the output folder."""
    return [f"{case}.seg.nrrd", f"{LABELMAP_FOLDER}/{case}.nrrd"]
