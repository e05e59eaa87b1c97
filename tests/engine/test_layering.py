"""The package's import structure: no module-level import cycle, and the model layer
knows nothing of devices (device choice is :mod:`streamlstm.devices`')."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "streamlstm"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Names of the modules ``node`` imports (``from x import y`` may import ``x.y``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - node.level + 1]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    return [target, *(f"{target}.{alias.name}" for alias in node.names)]


def _module_level_imports() -> dict[str, set[str]]:
    """Each package module -> the package modules it imports when it is imported (imports
    inside functions and under ``if TYPE_CHECKING:`` are not run then)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _imported(module, path.name == "__init__.py", node)
                # A module's own packages are initialised before it: no cycle there.
                own = {name for name in names if f"{module}.".startswith(f"{name}.")}
                imported |= {name for name in names if name in paths} - own
        graph[module] = imported
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_package_has_no_module_level_import_cycle():
    graph = _module_level_imports()
    assert "streamlstm.model" in graph["streamlstm.packing"]  # edges are found
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    # The check above must be able to fail.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_model_module_imports_nothing_of_the_gpu_or_the_banks():
    # Model.bank and Model.windows reach the banks through streamlstm.devices, lazily.
    tree = ast.parse((PACKAGE / "model.py").read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):  # function-level imports included
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= set(_imported("streamlstm.model", False, node))
    assert not {name for name in imported if name.startswith("streamlstm.cuda")}
    assert not imported & {"streamlstm.bank", "streamlstm.windows"}
    assert "streamlstm.devices" in imported  # Model.bank / Model.windows choose there
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, streamlstm.model; "
            "print(sorted(m for m in sys.modules if m.startswith("
            "('streamlstm.cuda', 'streamlstm.devices'))))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
