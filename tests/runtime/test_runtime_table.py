"""resnext.runtime.table: the data-only table of runtimes agrees with itself, with pyproject.toml's extras, with the
precisions the CLI accepts, and imports nothing of the package above it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

from resnext.cli import main
from resnext.errors import ResnextError
from resnext.runtime import table
from resnext.runtime.table import EXPORT_FORMATS, RUNTIMES, Runtime, get_runtime, runtime_for_file

ROOT = Path(__file__).resolve().parents[2]
TABLE_SOURCE = ROOT / "src" / "resnext" / "runtime" / "table.py"


def test_every_runtime_is_found_by_its_name_and_its_suffixes(tmp_path: Path) -> None:
    claimed = [s for r in RUNTIMES.values() for s in r.suffixes]
    assert len(claimed) == len(set(claimed)), "two runtimes claim one suffix"
    for name, runtime in RUNTIMES.items():
        assert runtime.name == name and get_runtime(name) is runtime
        for suffix in runtime.suffixes:
            assert suffix == suffix.lower() and suffix.startswith(".")
            for file_name in (f"model{suffix}", f"MODEL{suffix.upper()}"):
                path = tmp_path / file_name
                path.write_bytes(b"")
                assert runtime_for_file(path) is runtime, file_name


def test_unknown_names_and_suffixes_are_one_line_errors_listing_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ResnextError, match="unknown backend 'tensorflow'") as unknown:
        get_runtime("tensorflow")
    assert all(name in str(unknown.value) for name in RUNTIMES) and "\n" not in str(unknown.value)

    odd = tmp_path / "model.h5"
    odd.write_bytes(b"")
    with pytest.raises(ResnextError, match="cannot tell which runtime reads model.h5") as suffix:
        runtime_for_file(odd)
    assert all(s in str(suffix.value) for r in RUNTIMES.values() for s in r.suffixes)
    with pytest.raises(ResnextError, match="model file not found"):
        runtime_for_file(tmp_path / "absent.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(ResnextError, match="model file not found"):
        runtime_for_file(tmp_path / "folder.onnx")


def test_export_formats_point_back_at_runtimes_that_read_files() -> None:
    for fmt, runtime in EXPORT_FORMATS.items():
        assert runtime.export_format == fmt and RUNTIMES[runtime.name] is runtime
        assert runtime.suffixes, f"--format {fmt} writes files no runtime reads"
    assert RUNTIMES["torch"].export_format is None  # the in-process model is not an export


def accepted_by_cli(precision: str) -> bool:
    """Whether ``resnext classify --precision P`` parses (argparse checks choices before it reaches --help)."""
    return main(["classify", "--precision", precision, "--help"]) == 0


def test_precisions_are_names_the_cli_accepts(capsys) -> None:
    assert not accepted_by_cli("fp8")  # the check below can fail
    for runtime in RUNTIMES.values():
        assert runtime.precisions and len(set(runtime.precisions)) == len(runtime.precisions)
        for precision in runtime.precisions:
            assert accepted_by_cli(precision), f"{runtime.name} runs {precision}, which --precision refuses"
    capsys.readouterr()


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_extra_is_declared_in_pyproject_and_installs_its_module() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for runtime in RUNTIMES.values():
        assert (runtime.module is None) == (runtime.extra is None), runtime.name
        if runtime.extra is None:
            continue
        assert runtime.extra in extras, f"{runtime.name}: extra {runtime.extra!r} is not in pyproject.toml"
        assert runtime.module.lower() in requirement_names(extras[runtime.extra]), runtime.name


def test_a_missing_runtime_names_the_extra_that_installs_it() -> None:
    absent = Runtime("absent", (".absent",), ("fp32",), module="resnext_no_such_module", extra="onnx")
    assert not absent.installed()
    with pytest.raises(ResnextError, match=r"pip install 'resnext\[onnx\]'"):
        absent.import_runtime()
    assert RUNTIMES["torch"].import_runtime() is None  # PyTorch itself: nothing to import


def test_the_table_imports_nothing_of_the_package_above_it() -> None:
    """Data only: its package imports are the lowest layer (errors), and no import by name reaches resnext."""
    tree = ast.parse(TABLE_SOURCE.read_text())
    package_imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("resnext")):
            package_imports.add((node.level, node.module))
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("resnext") for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            text = ast.unparse(node.args[0]) if node.args else ""
            assert "resnext" not in text, f"import by name: {ast.unparse(node)}"
    assert package_imports == {(2, "errors")}
    for runtime in RUNTIMES.values():  # the only import_module calls import these
        assert runtime.module is None or not runtime.module.startswith("resnext")
    assert table.__name__ == "resnext.runtime.table"
