"""The architecture as rules a test can check (ast only, nothing imported): layers, siblings, sizes.

    floor          pipeline/io.py, errors.py, distributed.py      import nothing above them
    libraries      data/, lm/, analysis/, theory/                 never orchestration, stages or config
    stages         stages/*.py                                    artifacts.py and libraries, never each other
    orchestration  orchestration/, config/                        anything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pipeline"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every pipeline module a file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    known = modules()
    return {name for name in found if name in known}


def layer(name: str) -> str:
    if name in ("pipeline.io", "pipeline.errors", "pipeline.distributed"):
        return "floor"
    for prefix, kind in (("pipeline.data", "library"), ("pipeline.lm", "library"), ("pipeline.analysis", "library"),
                         ("pipeline.theory", "library"), ("pipeline.stages", "stages"),
                         ("pipeline.orchestration", "orchestration"), ("pipeline.config", "config")):
        if name == prefix or name.startswith(prefix + "."):
            return kind
    return "top"


def test_no_stage_imports_another_stage():
    stages = {n for n in modules() if n.startswith("pipeline.stages.")} - {"pipeline.stages.artifacts"}
    bad = [(name, other) for name in stages for other in imports_of(modules()[name])
           if other in stages and other != name]
    assert not bad, f"stages import each other (use pipeline/stages/artifacts.py): {bad}"


@pytest.mark.parametrize("kind, forbidden", [
    ("floor", {"library", "stages", "orchestration", "config", "top"}),
    ("library", {"stages", "orchestration", "config"}),
    ("stages", {"top"}),
])
def test_layers_import_only_downwards(kind, forbidden):
    bad = [(name, other) for name, path in modules().items() if layer(name) == kind
           for other in imports_of(path) if layer(other) in forbidden]
    assert not bad, f"{kind} modules import from {sorted(forbidden)}: {bad}"


def test_theory_is_self_contained():
    bad = [(name, other) for name, path in modules().items() if name.startswith("pipeline.theory")
           for other in imports_of(path) if not other.startswith("pipeline.theory")]
    assert not bad, bad


def test_no_import_cycle():
    graph = {name: {o for o in imports_of(path) if o != name} for name, path in modules().items()}
    # A package importing its own submodules (its public API) is not a cycle between modules.
    graph = {name: {o for o in deps if not o.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_modules_and_functions_stay_small():
    long_modules = {str(p.relative_to(ROOT.parent)): n for p in modules().values()
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    long_functions = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({length})")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
