"""The engine's Python requirements: one source (``pyproject.toml``), checked with versions.

``Resources/requirements.txt`` is generated from ``[project].dependencies`` of
``pyproject.toml`` (``python -m SSLSegmentLib.dependencies --write``; a test keeps them
equal), because the installed extension ships ``Resources/`` but not ``pyproject.toml``.
Inside Slicer the module installs what is missing: torch through the PyTorch extension
(the build that matches the GPU), the rest with ``slicer.pydeps.pip_ensure`` (Slicer 5.11+)
or, on older Slicer, after :func:`unmetRequirements` compared the installed versions with
the requirements. No ``slicer`` or ``qt`` here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
REQUIREMENTS = ROOT / "Resources" / "requirements.txt"
TORCH = "torch"

HEADER = """\
# Generated from pyproject.toml ([project].dependencies) by
# `python -m SSLSegmentLib.dependencies --write`: edit pyproject.toml, not this file.
# Inside Slicer, torch is installed by the PyTorch extension (the build that matches the GPU),
# the other packages with pip after the user confirms.
"""


@dataclass(frozen=True)
class Unmet:
    """A requirement the running Python does not satisfy; ``installed`` is None when absent."""

    requirement: str
    name: str
    installed: str | None

    def describe(self) -> str:
        state = f"installed: {self.installed}" if self.installed else "missing"
        return f"{self.requirement} ({state})"


def readRequirements(path: str | Path = REQUIREMENTS) -> list[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    lines = (line.split("#")[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def pyprojectRequirements(path: str | Path = PYPROJECT) -> list[str]:
    """``[project].dependencies`` of a pyproject.toml."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        import tomllib  # noqa: PLC0415  (Python 3.11+)
    except ModuleNotFoundError:  # Python 3.10: the list is simple enough to read directly
        project = text.split("[project]", 1)[1]
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", project, re.S | re.M)
        return re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return list(tomllib.loads(text).get("project", {}).get("dependencies", []))


def requirementsFileText(pyproject: str | Path = PYPROJECT) -> str:
    return HEADER + "".join(f"{requirement}\n" for requirement in pyprojectRequirements(pyproject))


def requirementName(requirement: str) -> str:
    """``monai[nibabel]>=1.4`` -> ``monai``."""
    return re.split(r"[\s<>=!~\[;@(]", requirement.strip(), maxsplit=1)[0]


def isTorch(requirement: str) -> bool:
    return requirementName(requirement).lower() == TORCH


def installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmetRequirements(requirements: list[str]) -> list[Unmet]:
    """The requirements whose package is missing or whose installed version is outside the range."""
    importlib.invalidate_caches()  # pip may have just installed something
    unmet = []
    for requirement in requirements:
        name = requirementName(requirement)
        installed = installedVersion(name)
        if installed is None and isBundled(name):
            continue  # built into the host (Slicer's SimpleITK): pip must not replace it
        if installed is None or not _versionSatisfies(requirement, installed):
            unmet.append(Unmet(requirement, name, installed))
    return unmet


def isBundled(name: str) -> bool:
    """Importable although no installed distribution provides it (built into Slicer)."""
    return installedVersion(name) is None and importlib.util.find_spec(name) is not None


def _versionSatisfies(requirement: str, installed: str) -> bool:
    try:
        from packaging.requirements import Requirement  # noqa: PLC0415  (bundled with Slicer and pip)
    except ModuleNotFoundError:
        return True  # cannot compare versions: presence is all that can be checked
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return True  # not needed on this platform
    return parsed.specifier.contains(installed, prereleases=True)


def needsRestart(unmet: list[Unmet], modules: dict | None = None) -> list[str]:
    """Packages an install would upgrade while an old version is already imported: the
    running application keeps the old code until it restarts."""
    modules = sys.modules if modules is None else modules
    return [item.name for item in unmet if item.installed is not None
            and any(name in modules for name in importNames(item.name))]


def importNames(distribution: str) -> list[str]:
    """Top-level modules a distribution provides (``pynrrd`` -> ``nrrd``)."""
    names = [module for module, distributions in importlib.metadata.packages_distributions().items()
             if any(d.lower() == distribution.lower() for d in distributions)]
    return names or [distribution]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check or regenerate Resources/requirements.txt from pyproject.toml")
    parser.add_argument("--write", action="store_true", help="rewrite Resources/requirements.txt")
    args = parser.parse_args(argv)
    expected = requirementsFileText()
    if args.write:
        REQUIREMENTS.write_text(expected, encoding="utf-8")
        return 0
    if REQUIREMENTS.read_text(encoding="utf-8") != expected:
        print(f"{REQUIREMENTS} differs from pyproject.toml: run with --write", file=sys.stderr)
        return 1
    unmet = unmetRequirements(readRequirements())
    for item in unmet:
        print(item.describe())
    return 1 if unmet else 0


if __name__ == "__main__":
    sys.exit(main())
