"""The Slicer module's files, checked without Slicer: the .ui, the module file, CMake, icon.

``SSLSegment.py`` imports ``qt``, which exists only inside Slicer, so it is read as source
(AST), never imported.
"""

from __future__ import annotations

import ast
import py_compile
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "SSLSegment" / "SSLSegment.py"
UI_FILE = ROOT / "Resources" / "UI" / "SSLSegment.ui"
ICON_FILE = ROOT / "Resources" / "Icons" / "SSLSegment.png"

# Widget classes the parameter node wrapper can bind, and the type each needs.
BINDABLE = {"QComboBox": "Choice", "QSpinBox": "int", "ctkDirectoryButton": "pathlib.Path"}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def module_source() -> str:
    return MODULE_FILE.read_text(encoding="utf-8")


def gui_source() -> str:
    """The module file and its Qt helper package (SSLSegment/SSLSegmentGui)."""
    helpers = sorted((ROOT / "SSLSegment" / "SSLSegmentGui").glob("*.py"))
    return "\n".join([module_source()] + [p.read_text(encoding="utf-8") for p in helpers])


def parameter_fields() -> dict[str, str]:
    """``{name: annotation source}`` of the @parameterNodeWrapper class."""
    tree = ast.parse(module_source())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SSLSegmentParameterNode"]
    return {s.target.id: ast.unparse(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_module_file_compiles(tmp_path):
    for path in [MODULE_FILE, *(ROOT / "SSLSegment" / "SSLSegmentGui").glob("*.py")]:
        py_compile.compile(str(path), cfile=str(tmp_path / f"{path.stem}.pyc"), doraise=True)


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = set(re.findall(r"(?:self|widget)\.ui\.([A-Za-z_][A-Za-z0-9_]*)", gui_source()))
    assert used, "the widget uses no .ui widget?"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"widgets used in SSLSegment.py but absent from the .ui: {missing}"


def test_ui_widget_names_are_unique():
    names = [w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates


def test_ui_parameters_match_the_parameter_node():
    fields = parameter_fields()
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") != "SlicerParameterName":
                continue
            parameter = prop.find("string").text
            assert parameter in fields, f"{name} is bound to unknown parameter {parameter!r}"
            needed = BINDABLE.get(widget.get("class"))
            assert needed, f"{name}: no GUI connector for {widget.get('class')}"
            assert needed in fields[parameter], f"{name} ({widget.get('class')}) needs {needed}: {fields[parameter]}"


def test_sections_of_the_panel_exist():
    sections = {w.get("name") for w in ui_widgets().values() if w.get("class") == "ctkCollapsibleButton"}
    assert {"dataCollapsibleButton", "methodCollapsibleButton", "trainCollapsibleButton",
            "resultsCollapsibleButton", "correctCollapsibleButton", "exportCollapsibleButton"} <= sections


def test_module_follows_the_slicer_conventions():
    source = module_source()
    tree = ast.parse(source)
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["SSLSegment"]
    assert "VTKObservationMixin" in classes["SSLSegmentWidget"]
    assert "ScriptedLoadableModuleTest" in classes["SSLSegmentTest"]
    for needed in ("@parameterNodeWrapper", "qt.QTimer", "StartCloseEvent",
                   "parent.helpText", "parent.acknowledgementText"):
        assert needed in source, needed
    for needed in ("tryWithErrorDisplay", "PyTorchUtils", "pip_install", "pip_ensure", "createProgressDialog", "restart", "qt.QSettings"):
        assert needed in gui_source(), needed


def test_lib_never_imports_the_gui():
    for path in (ROOT / "SSLSegmentLib").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("qt", "ctk", "SSLSegment"), f"{path}: imports {name}"


def test_icon_is_a_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_cmake_lists_the_module_files():
    root = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer",
                "add_subdirectory(SSLSegment)", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK"):
        assert key in root, key
    assert re.search(r'EXTENSION_CATEGORY\s+"Segmentation"', root)
    assert re.search(r'EXTENSION_DEPENDS\s+"PyTorch"', root)
    module = (ROOT / "SSLSegment" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module and "WITH_GENERIC_TESTS" in module
    assert "slicer_add_python_unittest" in module
    # A "../" path given to Slicer's macro lands outside the installed folder (lost from the
    # package): the engine and resources are copied in first (test_packaging builds it).
    assert "../" not in module.split("slicerMacroBuildScriptedModule(")[1]
    assert "SSLSegmentLib/*.py" in module and "Resources/*" in module


def test_requirements_are_installable_names():
    lines = [line.split("#")[0].strip() for line in (ROOT / "Resources" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements and all(re.match(r"^[A-Za-z0-9_.-]+([<>=!~].*)?$", r) for r in requirements)
    # torch is listed (pyproject is the one source) but installed by PyTorchUtils, not pip.
    assert any(r.startswith("torch") for r in requirements)
    assert "isTorch" in gui_source() and "PyTorchUtils" in gui_source()


def test_panel_choices_and_defaults_come_from_the_contract():
    """The parameter node's choices are the torch-free lists of ``round_settings`` (the catalogue,
    the presets, ``TrainConfig``'s options), its training defaults ``TrainConfig``'s; the .ui
    lists no items of its own (the parameter node fills each combo box from its choices)."""
    from SSLSegmentLib.round_settings import METHOD_CHOICES, NETWORK_CHOICES, PRESET_CHOICES

    fields = parameter_fields()
    for name, choices in (("method", "METHOD_CHOICES"), ("network", "NETWORK_CHOICES"), ("preset", "PRESET_CHOICES"),
                          ("dim", "DIM_CHOICES"), ("device", "DEVICE_CHOICES")):
        assert fields[name] == f"Annotated[str, Choice(list({choices}))]", fields[name]
    tree = ast.parse(module_source())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SSLSegmentParameterNode"]
    defaults = {s.target.id: ast.unparse(s.value) for s in cls.body if isinstance(s, ast.AnnAssign)}
    for name in ("method", "network", "iterations", "seed", "dim", "device"):
        assert defaults[name] == f"TrainConfig.{name}", (name, defaults[name])
    assert "round_settings import" in module_source() and "METHOD_CHOICES" not in (
        ROOT / "SSLSegmentLib" / "logic.py").read_text(encoding="utf-8")
    assert METHOD_CHOICES and NETWORK_CHOICES and "auto" in PRESET_CHOICES
    for widget in ui_widgets().values():
        if widget.get("class") == "QComboBox":
            assert not widget.findall("item"), f"{widget.get('name')} lists items: they would repeat the choices"


def _class_source(name: str) -> str:
    tree = ast.parse(module_source())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    return ast.get_source_segment(module_source(), cls)


def test_category_uses_slicer_translation_context():
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in _class_source("SSLSegment")


def test_engine_logic_is_initialised_once():
    """Slicer 5.8+ runs the engine logic's __init__ through super(): a second call would
    add a second scene-close observer and leak the first."""
    init = _class_source("SSLSegmentLogic")
    assert init.count("_EngineLogic.__init__") == 1 and 'if not hasattr(self, "scene")' in init


def test_self_test_cleans_up_and_skips_training_without_the_engine():
    test = _class_source("SSLSegmentTest")
    assert "finally:" in test and "shutil.rmtree(workFolder" in test and "logic.cleanup()" in test
    assert "unmetRequirements" in test and "skipped" in test
    assert "test_SSLSegment_panel" in test.split("if unmet:")[0]  # runs without torch


def test_reload_reloads_the_engine():
    widget = _class_source("SSLSegmentWidget")
    assert "def onReload" in widget and '"SSLSegmentLib"' in widget and "del sys.modules[name]" in widget


def test_results_and_segment_widgets():
    widgets = ui_widgets()
    assert widgets["show3DButton"].get("class") == "qMRMLSegmentationShow3DButton"
    assert widgets["segmentVolumesSelector"].get("class") == "qMRMLCheckableNodeComboBox"
    custom = {c.find("class").text for c in ET.parse(UI_FILE).getroot().iter("customwidget")}
    used = {w.get("class") for w in widgets.values()}
    assert used - custom <= {"QLabel", "QPushButton", "QTableWidget", "QComboBox", "QSpinBox", "QProgressBar",
                             "QPlainTextEdit", "QWidget"}, used - custom


def test_settings_keep_what_the_issue_names():
    source = (ROOT / "SSLSegment" / "SSLSegmentGui" / "settings.py").read_text(encoding="utf-8")
    assert 'KEPT = ("method", "network", "preset", "device", "jobsDirectory")' in source
    fields = parameter_fields()
    assert {"method", "network", "preset", "device", "jobsDirectory"} <= set(fields)


def test_panel_helpers_never_reach_into_the_engine_internals():
    """The Qt helpers talk to the logic's public methods only (the engine stays GUI-free)."""
    for path in (ROOT / "SSLSegment" / "SSLSegmentGui").glob("*.py"):
        assert "logic._" not in path.read_text(encoding="utf-8"), path


def test_extension_metadata():
    root = (ROOT / "CMakeLists.txt").read_text()
    description = re.search(r'EXTENSION_DESCRIPTION\s+"([^"]+)"', root).group(1)
    assert 1 <= len(re.findall(r"[.!?](\s|$)", description)) <= 2, description
    license_text = (ROOT / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    prefix = "https://raw.githubusercontent.com/SSLSegment/SlicerSSLSegment/main/"
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in re.search(rf'{key}\s+"([^"]+)"', root).group(1).split():
            assert url.startswith(prefix), url
            image = ROOT / url[len(prefix):]
            assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
