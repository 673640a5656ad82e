"""The package's import rules (README, "Architecture"): imports point down the layers, and there are no cycles.

Every import counts, also those inside functions (lazy imports of optional parts): a lower module never imports a
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
    {"runtimes", "backends"},
    {"explain", "predict", "export", "export_config", "export_writers", "auto", "auto_cache"},
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


def imported_modules(path: Path) -> set[str]:
    """Top-level modules of the package that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
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
