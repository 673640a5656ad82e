"""The package's import rules (README, "Architecture"): imports point down the layers, and there are no cycles.

Every import counts, also those inside functions (lazy imports of optional parts) and imports by name
(``importlib.import_module("resnext.x")``, ``__import__``, f-strings of that shape): a lower module never imports a
higher one. Modules of the same layer may import each other as long as no cycle forms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resnext"

#: lowest first; a module must be listed here (a new module forces a decision about its place)
LAYERS: list[set[str]] = [
    {"errors"},
    {"util", "labels", "transforms", "download", "hardware"},
    {"weights", "resnet", "hf"},
    {"sources", "models", "images"},
    {"runtimes", "backend", "backends"},
    {"explain", "predict", "export", "export_config", "export_writers", "auto", "auto_choice", "auto_cache"},
    {
        "hub",
        "report",
        "data",
        "distributed",
        "checkpoint",
        "train_config",
        "optim",
        "evaluate",
        "train",
        "bulk",
        "bulk_io",
        "bulk_output",
        "bulk_parts",
        "bulk_ray",
        "demo",
        "serve",
        "bench",
    },
    {"cli", "__main__", "__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def top_module(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def package_of(path: Path) -> list[str]:
    return ["resnext", *path.relative_to(SRC).parts[:-1]]


#: what a module imported by a name computed at run time (``import_module(f"resnext.{name}")``) is recorded as
COMPUTED = "<computed name>"


def _name_imported(node: ast.Call) -> str | None:
    """``"resnext.x..."`` for ``import_module("resnext.x...")`` / ``__import__(...)`` (an f-string keeps its literal
    start, so ``f"resnext.{name}"`` gives ``"resnext.<computed name>"``); None for any other call."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        literal = ""
        for value in arg.values:
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                return literal + COMPUTED
            literal += value.value
        return literal
    return None  # a variable: a third-party runtime's package name (an optional dependency), never ours


def imported_modules(path: Path) -> set[str]:
    """Top-level modules of the package that ``path`` imports, anywhere in the file."""
    return modules_imported_by(ast.parse(path.read_text()), path)


def modules_imported_by(tree: ast.AST, path: Path) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name_imported(node)
            if name is not None and name.startswith("resnext."):
                found.add(name.split(".")[1])
            elif name is not None and name.startswith(COMPUTED):  # e.g. f"{__name__}.{command}"
                found.add(COMPUTED)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(path)[: len(package_of(path)) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
                if len(parts) == 1:  # "from . import x" at the package root
                    found |= {alias.name for alias in node.names}
                    continue
            elif node.module and node.module.startswith("resnext"):
                parts = node.module.split(".")
                if len(parts) == 1:
                    found |= {alias.name for alias in node.names if (SRC / f"{alias.name}.py").exists()}
                    continue
            else:
                continue
            found.add(parts[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("resnext.")}
    return found - {top_module(path)}


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        graph.setdefault(top_module(path), set()).update(imported_modules(path))
    return graph


def test_every_module_has_a_layer():
    unplaced = sorted(set(edges()) - set(RANK))
    assert not unplaced, f"give these modules a layer in tests/test_layering.py: {unplaced}"


def test_imports_by_name_are_read_as_imports():
    """An import spelled as a string is still an import: it can close a cycle the ``import`` statements do not."""
    code = """
import importlib
from importlib import import_module
def late(kind):
    importlib.import_module("resnext.auto").auto_backend()
    import_module(f"resnext.backends").BACKENDS
    __import__("resnext.export_writers")
    import_module(f"resnext.{kind}")
    import_module("numpy")
"""
    found = modules_imported_by(ast.parse(code), SRC / "runtimes.py")
    assert found == {"auto", "backends", "export_writers", COMPUTED}


def test_no_module_is_imported_by_a_computed_name():
    """Explicit imports over names computed at run time: the layering (and mypy) cannot follow those."""
    computed = sorted(module for module, targets in edges().items() if COMPUTED in targets)
    assert not computed, f"import these modules explicitly: {computed}"


def test_imports_point_down():
    upward = [
        f"{module} (layer {RANK[module]}) imports {target} (layer {RANK[target]})"
        for module, targets in edges().items()
        for target in targets
        if module in RANK and target in RANK and RANK[target] > RANK[module]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = edges()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                pytest.fail(
                    "import cycle: " + " -> ".join(trail[trail.index(target) :] + [node, target])
                    if target in trail
                    else f"import cycle: {node} -> {target}"
                )
            if state.get(target) is None:
                visit(target, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_import_resnext_needs_only_the_required_dependencies():
    """``import resnext`` never imports an optional runtime (they load only when a command needs them)."""
    import subprocess
    import sys

    code = (
        "import sys, resnext; optional = ['onnxruntime', 'openvino', 'tensorrt', 'gradio', 'ray', 'pytriton', "
        "'tritonclient', 'matplotlib', 'pyarrow']; print([m for m in optional if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


#: README and design.md: functions of at most ~80 lines, modules of about 450 (a little slack, not a second rule)
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 470


def test_functions_and_modules_stay_small():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "\n".join(too_long)
