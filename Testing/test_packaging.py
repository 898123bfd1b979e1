"""The extension as the Extensions Manager ships it: built and installed with Slicer's real macros.

``slicerMacroBuildScriptedModule`` (Slicer) and ``ctkMacroCompilePythonScript`` (CTK) copy
each listed file to ``<qt-scripted-modules>/<path as written>`` and install only that folder.
This test configures, builds and installs ``SSLSegment/`` with unmodified copies of those
macros (``../shared/reference/slicer-cmake``, see its README) into a temporary prefix, then
checks that the engine and the resources are where ``SSLSegment.py`` looks for them, and
that a fresh Python process finds the engine there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICER_CMAKE = ROOT.parent / "shared" / "reference" / "slicer-cmake"
SCRIPTED_MODULES = "lib/Slicer-5.8/qt-scripted-modules"

TOP_LEVEL = f"""cmake_minimum_required(VERSION 3.16)
project(SSLSegmentPackagingTest NONE)
set(CTK_CMAKE_DIR "{SLICER_CMAKE.as_posix()}")
include(${{CTK_CMAKE_DIR}}/ctkMacroCompilePythonScript.cmake)
# Byte-compiling needs Python's C headers; the copy and install rules stay untouched.
function(_ctk_add_compile_python_directories_target target keep_only_pyc)
endfunction()
include(${{CTK_CMAKE_DIR}}/SlicerMacroBuildScriptedModule.cmake)
set(Slicer_USE_PYTHONQT ON)
set(BUILD_TESTING OFF)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED_MODULES})
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED_MODULES})
add_subdirectory(SSLSegment)
"""


def _missing_tools() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed (apt-get install cmake)"
    if not (SLICER_CMAKE / "SlicerMacroBuildScriptedModule.cmake").is_file():
        return f"Slicer's CMake macros are not at {SLICER_CMAKE} (they come with the project's shared folder)"
    return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build and install a copy of the module folder, as the extension build does."""
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("extension")
    source = work / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("SSLSegment", "SSLSegmentLib", "Resources"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    (source / "CMakeLists.txt").write_text(TOP_LEVEL, encoding="utf-8")
    build, prefix = work / "build", work / "install"
    for command in (["cmake", "-S", source, "-B", build], ["cmake", "--build", build],
                    ["cmake", "--install", build, "--prefix", prefix]):
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}"
    return {"build": build / SCRIPTED_MODULES, "install": prefix / SCRIPTED_MODULES}


def _expected_files() -> dict[str, Path]:
    """``{path in the scripted-modules folder: source file}``."""
    engine = [p for p in (ROOT / "SSLSegmentLib").rglob("*.py") if "__pycache__" not in p.parts]
    resources = [p for p in (ROOT / "Resources").rglob("*") if p.is_file()]
    module = [ROOT / "SSLSegment" / "SSLSegment.py", *(ROOT / "SSLSegment" / "SSLSegmentGui").glob("*.py")]
    files = {p.relative_to(ROOT).as_posix(): p for p in engine + resources}
    files.update({p.relative_to(ROOT / "SSLSegment").as_posix(): p for p in module})
    return files


@pytest.mark.parametrize("tree", ["build", "install"])
def test_every_engine_and_resource_file_is_shipped(installed, tree):
    folder = installed[tree]
    expected = _expected_files()
    assert {"SSLSegmentLib/logic.py", "SSLSegmentLib/methods/bcp.py", "Resources/UI/SSLSegment.ui",
            "Resources/Icons/SSLSegment.png", "SSLSegment.py", "SSLSegmentGui/install.py"} <= set(expected)
    missing = [name for name in expected if not (folder / name).is_file()]
    assert not missing, f"the {tree} tree lacks {missing}"
    for name, source in expected.items():  # copies, not stale or empty files
        assert (folder / name).read_bytes() == source.read_bytes(), name
    strays = [p for p in folder.parent.rglob("*") if p.is_file() and folder not in p.parents]
    assert not strays, f"files outside the scripted-modules folder are never installed: {strays}"


def test_a_fresh_python_imports_the_engine_from_the_install_tree(installed):
    pytest.importorskip("slicer", reason="SSLSegmentLib.logic needs slicer-core (pip install slicer-core)")
    folder = installed["install"]
    # Slicer puts the module folder on sys.path; nothing of the source checkout may be found.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(folder)
    code = ("import SSLSegmentLib, SSLSegmentLib.logic as logic; "
            "print(SSLSegmentLib.__file__); print(logic.packageParent())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=folder.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    package_file, package_parent = result.stdout.split()[-2:]
    assert Path(package_file).resolve() == (folder / "SSLSegmentLib" / "__init__.py").resolve()
    # The training child gets this folder on its PYTHONPATH: it must hold the engine.
    assert Path(package_parent).resolve() == folder.resolve()
