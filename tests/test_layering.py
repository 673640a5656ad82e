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

#: lowest first, by the top-level name under ``src/resnext`` (a module or a role subpackage); a new one must be
#: listed here (it forces a decision about its place). README "Architecture" draws the same map.
LAYERS: list[set[str]] = [
    {"errors", "version"},
    {"util", "labels", "transforms", "download", "images", "options"},
    {"model"},
    {"runtime"},
    {"export"},
    {"inference"},
    {"training", "bulk"},
    {"serve"},
    {"demo", "bench"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
#: at most this many modules directly in ``src/resnext`` besides ``__init__``/``__main__`` (issue 18)
MAX_ROOT_MODULES = 10


def module_of(path: Path) -> str:
    """``resnext.model.sources`` for ``model/sources.py``; a package's ``__init__.py`` is the package."""
    parts = ["resnext", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    """The layer name of a dotted module: ``model`` for ``resnext.model.sources``, ``__init__`` for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative / "__init__.py").is_file()


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


def _deepest_module(dotted: str) -> str:
    """``resnext.model.sources`` for ``resnext.model.sources.load_source`` (a name inside a module)."""
    parts = dotted.split(".")
    while len(parts) > 1 and not is_module(".".join(parts)):
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Dotted modules of the package that ``path`` imports, anywhere in the file."""
    return modules_imported_by(ast.parse(path.read_text()), path)


def modules_imported_by(tree: ast.AST, path: Path) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name_imported(node)
            if name is not None and COMPUTED in name:  # e.g. f"{__name__}.{command}"
                found.add(COMPUTED)
            elif name is not None and name.startswith("resnext."):
                found.add(_deepest_module(name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(path)[: len(package_of(path)) - node.level + 1]
                module = ".".join(base + (node.module.split(".") if node.module else []))
            elif node.module and node.module.split(".")[0] == "resnext":
                module = node.module
            else:
                continue
            for alias in node.names:  # "from .model import sources" imports the module resnext.model.sources
                found.add(_deepest_module(f"{module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            found |= {_deepest_module(a.name) for a in node.names if a.name.startswith("resnext.")}
    return found - {module_of(path)}


def module_edges() -> dict[str, set[str]]:
    """Every module of the package and the modules it imports."""
    return {module_of(path): imported_modules(path) for path in SRC.rglob("*.py")}


def edges() -> dict[str, set[str]]:
    """The same, by layer name (``model``, ``runtime``, ``errors``, ...)."""
    graph: dict[str, set[str]] = {}
    for module, targets in module_edges().items():
        graph.setdefault(top(module), set()).update(top(t) if t != COMPUTED else t for t in targets)
        graph[top(module)].discard(top(module))
    return graph


def test_the_root_holds_few_modules():
    """A newcomer sees the layers from ``ls src/resnext``: role subpackages, and only small shared helpers beside
    them."""
    modules = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


def test_every_module_has_a_layer():
    unplaced = sorted(set(edges()) - set(RANK))
    assert not unplaced, f"give these modules a layer in tests/test_layering.py: {unplaced}"


def test_imports_by_name_are_read_as_imports():
    """An import spelled as a string is still an import: it can close a cycle the ``import`` statements do not."""
    code = """
import importlib
from importlib import import_module
def late(kind):
    importlib.import_module("resnext.inference.auto").auto_backend()
    import_module(f"resnext.runtime.backends").BACKENDS
    __import__("resnext.export.writers")
    import_module(f"resnext.{kind}")
    import_module("numpy")
"""
    found = modules_imported_by(ast.parse(code), SRC / "runtime" / "table.py")
    assert found == {"resnext.inference.auto", "resnext.runtime.backends", "resnext.export.writers", COMPUTED}


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


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its nodes, the first repeated at the end), or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return trail[trail.index(target) :] + [node, target] if target in trail else [node, target]
            if state.get(target) is None and (cycle := visit(target, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("graph", [edges, module_edges], ids=["layers", "modules"])
def test_no_import_cycles(graph):
    """Neither between layers nor between any two modules, a package's ``__init__`` included."""
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


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


#: README and design.md: functions of at most ~80 lines, modules of at most ~450
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


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


def readme_layers() -> list[set[str]]:
    """The layer table of README's "Architecture" section: per row, the names of the second column, lowest first
    (``model/`` and ``demo.py`` read as ``model`` and ``demo``)."""
    import re

    text = (SRC.parents[1] / "README.md").read_text()
    section = text[text.index("## Architecture") :]
    section = section[: section.index("\n## ", 1)]
    lines = section.splitlines()
    rows = [line.split("|") for line in lines if line.startswith("| ") and not line.startswith("| layer")]
    return [{name.rstrip("/").removesuffix(".py") for name in re.findall(r"`([^`]+)`", row[2])} for row in rows]


def test_the_readme_map_is_the_folder_tree():
    """README's architecture table names every entry of ``src/resnext`` once, in the layers this test enforces."""
    entries = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert readme_layers() == LAYERS
    assert set().union(*LAYERS) == entries
