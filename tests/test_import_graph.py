"""The package's import graph (issue 15): ``evf`` never imports ``datamodules``; no import cycle among ``evf``
modules; commands import neither ``evf.cli`` nor each other; each shared helper is defined once."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVF = ROOT / "evf"
COMMANDS = EVF / "commands"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports when run (at top level or inside functions; not under ``if TYPE_CHECKING``),
    absolute names; ``from evf import presets`` counts as ``evf.presets`` (a parent package is imported anyway)."""
    found = set()
    stack = list(ast.parse(path.read_text(), str(path)).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack += node.orelse
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {m for m in submodules if m in MODULES} or {node.module}
        stack += list(ast.iter_child_nodes(node))
    return found


MODULES = {module_name(p): p for p in EVF.rglob("*.py")}


def evf_graph() -> dict[str, set[str]]:
    return {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_evf_never_imports_datamodules():
    offenders = {module_name(p): sorted(m for m in imports(p) if m.split(".")[0] == "datamodules")
                 for p in EVF.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def test_no_import_cycle_among_evf_modules():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]  # the check works
    assert find_cycles(evf_graph()) == []


def test_commands_import_neither_the_cli_nor_each_other():
    commands = {module_name(p) for p in COMMANDS.glob("*.py") if p.stem not in ("__init__", "common")}
    for path in COMMANDS.glob("*.py"):
        found = imports(path)
        assert "evf.cli" not in found, path
        assert not (found & commands) - {module_name(path)}, path


def test_each_shared_helper_is_defined_once():
    names = {"UserError", "OneLineParser", "first_line", "one_line", "slug", "import_class", "WEIGHT_FILES"}
    where: dict[str, list[str]] = {name: [] for name in names}
    for path in [*EVF.rglob("*.py"), *(ROOT / "datamodules").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        for node in ast.parse(path.read_text(), str(path)).body:
            defined = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
                t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            for name in set(defined) & names:
                where[name].append(str(path.relative_to(ROOT)))
    assert {name: len(files) for name, files in where.items()} == dict.fromkeys(names, 1), where


def test_test_modules_do_not_import_each_other():
    """Shared test code lives in helper modules (tests/contracts.py, cli_helpers.py, tiny_artifacts.py, ...)."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("tests.test_")]
    assert offenders == []
