"""One source for the engine's requirements, and the version check the Slicer module uses."""

from __future__ import annotations

from pathlib import Path

from SSLSegmentLib import dependencies
from SSLSegmentLib.dependencies import Unmet, needsRestart, readRequirements, unmetRequirements

ROOT = Path(__file__).resolve().parents[1]


def test_requirements_file_is_generated_from_pyproject():
    text = (ROOT / "Resources" / "requirements.txt").read_text(encoding="utf-8")
    assert text == dependencies.requirementsFileText(ROOT / "pyproject.toml"), \
        "run `python -m SSLSegmentLib.dependencies --write`"
    requirements = readRequirements(ROOT / "Resources" / "requirements.txt")
    assert requirements == dependencies.pyprojectRequirements(ROOT / "pyproject.toml")
    names = {dependencies.requirementName(r) for r in requirements}
    assert {"einops", "monai", "torch", "pynrrd"} <= names  # swin_unet and ctct need einops


def test_pyproject_is_read_without_tomllib_too(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tomllib(name, *args, **kwargs):  # Python 3.10 has no tomllib
        if name == "tomllib":
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    expected = dependencies.pyprojectRequirements(ROOT / "pyproject.toml")
    monkeypatch.setattr(builtins, "__import__", no_tomllib)
    assert dependencies.pyprojectRequirements(ROOT / "pyproject.toml") == expected


def test_versions_are_compared_not_only_names():
    import numpy

    assert unmetRequirements(["numpy>=1.0", "pytest"]) == []
    [too_old] = unmetRequirements(["numpy>=999"])
    assert too_old == Unmet("numpy>=999", "numpy", numpy.__version__)
    [missing] = unmetRequirements(["sslsegment-no-such-package>=1"])
    assert missing.installed is None and "missing" in missing.describe()
    assert unmetRequirements(['numpy>=999; sys_platform == "no-such-platform"']) == []


def test_an_upgrade_of_an_imported_package_needs_a_restart():
    unmet = unmetRequirements(["numpy>=999", "sslsegment-no-such-package"])
    assert needsRestart(unmet) == ["numpy"]  # numpy is imported; a fresh install is not
    assert needsRestart(unmet, modules={}) == []
    assert "nrrd" in dependencies.importNames("pynrrd")


def test_the_check_reports_what_is_unmet(capsys):
    assert dependencies.main([]) == 0  # this test environment has every requirement
