"""The package's layers, read from the source: no import cycles among module-level imports, and
no import from a lower layer to a higher one (issue 15).

Layers, lowest first:

1. the contract: settings, catalogue, run-folder protocol, errors, files (torch-free: the
   panel, the logic, the CLI and the web UI import it without loading the engine);
2. the engine: data, networks, methods, training, inference (torch, MONAI; never Slicer);
3. the clients: the command line, the demo, the job runner, the Slicer logic, the web UI.

Imports inside functions are deliberate late imports (a light ``--help``, an optional
package) and are left out of the cycle check, but not of the layer check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "SSLSegmentLib"

CONTRACT = {"config", "options", "catalogue", "measured_gain", "round_settings", "run_protocol", "errors", "fileio",
            "settings_check", "train_arguments"}
CLIENTS = {"cli", "demo", "jobs", "job_folder", "job_progress", "child_process", "logic", "slicer_logic", "web",
           "segmenting", "headless", "mrml", "dependencies", "predict_status", "__main__"}
TORCH_FREE = CONTRACT | {"jobs", "job_folder", "job_progress", "child_process"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_part(module: str) -> str:
    """``SSLSegmentLib.training.trainer`` -> ``training``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    """SSLSegmentLib modules (and ``torch``) that ``path`` imports, resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "torch":
                found.add("torch")
            elif name.startswith("SSLSegmentLib"):
                found.add(name)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported name lives in (``pkg.mod.func`` -> ``pkg.mod``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = {resolve(i, known) for i in imports_of(path, top_level_only) if i != "torch"}
        # a package's own __init__ importing its submodules is how registries load: not a cycle
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycle_among_module_level_imports():
    assert find_cycle(import_graph(top_level_only=True)) is None


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("name", sorted(n for n in modules() if top_part(n) not in CLIENTS))
def test_no_import_from_the_engine_or_the_contract_up_to_a_client(name):
    known = modules()
    upward = sorted(t for i in imports_of(known[name], top_level_only=False)
                    if i != "torch" and (t := resolve(i, known)) and top_part(t) in CLIENTS)
    assert not upward, f"{name} imports the client layer: {upward}"


@pytest.mark.parametrize("name", sorted(n for n in modules() if top_part(n) in TORCH_FREE))
def test_the_contract_and_the_job_runner_never_import_torch_or_the_engine(name):
    known = modules()
    module_level = imports_of(known[name], top_level_only=True)
    engine = sorted(t for i in module_level if i != "torch" and (t := resolve(i, known))
                    and top_part(t) not in TORCH_FREE | {""})
    assert "torch" not in module_level and not engine, f"{name} loads the engine at import: {engine or 'torch'}"
