"""The architecture as rules a test can check (ast only, nothing imported): floors, siblings, sizes.

Floors, lowest first; a module imports only from its own floor or below (no arrow points up):

    floor          pipeline/__init__.py, io.py, errors.py, distributed.py
    libraries      data/, lm/, analysis/, theory/          know nothing of runs, configs or stages
    config         config/                                 the typed schema (uses libraries' presets)
    contract       unit.py                                 Unit, UnitContext, PlanView, the Stage protocol
    stages         stages/                                 one module per stage, and artifacts.py
    orchestration  orchestration/                          plans, runs and launches units
    top            __main__.py

Siblings: no stage imports another stage (only artifacts.py); orchestration imports no stage module
(it loads them by name and calls them through the contract), only artifacts.py; theory imports only
itself. And no import cycle anywhere, a package's own submodules included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pipeline"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
FLOORS = (  # (floor, module prefixes), lowest first
    ("floor", ("pipeline", "pipeline.io", "pipeline.errors", "pipeline.distributed")),
    ("libraries", ("pipeline.data", "pipeline.lm", "pipeline.analysis", "pipeline.theory")),
    ("config", ("pipeline.config",)),
    ("contract", ("pipeline.unit",)),
    ("stages", ("pipeline.stages",)),
    ("orchestration", ("pipeline.orchestration",)),
    ("top", ("pipeline.__main__",)),
)
ARTIFACTS = "pipeline.stages.artifacts"


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


def floor_of(name: str) -> int | None:
    """The module's floor as its index in FLOORS; the root package `pipeline` names only itself."""
    for index, (_, prefixes) in enumerate(FLOORS):
        if any(name == prefix or (prefix != "pipeline" and name.startswith(prefix + ".")) for prefix in prefixes):
            return index
    return None


def test_every_module_has_a_floor():
    homeless = [name for name in modules() if floor_of(name) is None]
    assert not homeless, f"modules on no floor (add them to FLOORS): {homeless}"


def test_no_import_points_to_a_higher_floor():
    bad = [(name, other) for name, path in modules().items() for other in imports_of(path)
           if floor_of(other) > floor_of(name)]
    assert not bad, f"imports from a higher floor ({[f for f, _ in FLOORS]}, lowest first): {bad}"


def test_no_stage_imports_another_stage():
    stages = {n for n in modules() if n.startswith("pipeline.stages.")} - {ARTIFACTS}
    bad = [(name, other) for name in stages for other in imports_of(modules()[name])
           if other in stages and other != name]
    assert not bad, f"stages import each other (use pipeline/stages/artifacts.py): {bad}"


def test_orchestration_knows_stages_only_through_the_contract_and_artifacts():
    stage_modules = {n for n in modules() if n.startswith("pipeline.stages.")} - {ARTIFACTS}
    bad = [(name, other) for name, path in modules().items() if name.startswith("pipeline.orchestration")
           for other in imports_of(path) if other in stage_modules]
    assert not bad, f"orchestration imports stage modules (load them by name, see runner.default_stages): {bad}"


def test_theory_is_self_contained():
    bad = [(name, other) for name, path in modules().items() if name.startswith("pipeline.theory")
           for other in imports_of(path) if not other.startswith("pipeline.theory")]
    assert not bad, bad


def test_no_import_cycle():
    graph = {name: {o for o in imports_of(path) if o != name} for name, path in modules().items()}
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
