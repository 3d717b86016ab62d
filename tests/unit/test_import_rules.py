"""The layering STYLE.md asks for, enforced: the pure layers (core/, format/, errors,
config) import only the standard library, numpy and each other; nothing imports the CLI."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "reshard"
PURE = ["core", "format", "errors.py", "config.py"]
PURE_INTERNAL = {"core", "format", "errors", "config"}


def _modules(part: str) -> list[Path]:
    path = SRC / part
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in ``path``; level 0 is absolute."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


@pytest.mark.parametrize("path", [p for part in PURE for p in _modules(part)], ids=lambda p: p.name)
def test_pure_layers_import_only_the_standard_library(path: Path) -> None:
    package_depth = len(path.relative_to(SRC).parts) - 1
    for level, module in _imports(path):
        if level == 0:
            top = module.split(".")[0]
            # numpy is a declared dependency; torch and the rest stay out of the pure layers.
            assert top in sys.stdlib_module_names or top == "numpy", f"{path.name} imports {module}"
            continue
        # Relative: resolve to the first part under reshard/.
        climb = level - 1
        assert climb <= package_depth, f"{path.name} imports beyond the package"
        here = list(path.relative_to(SRC).parts[:-1])
        base = here[: len(here) - climb]
        first = (base + module.split("."))[0] if (base or module) else ""
        assert first in PURE_INTERNAL, f"{path.name} imports reshard.{first}, not a pure layer"


def test_nothing_imports_the_cli() -> None:
    for path in SRC.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for _, module in _imports(path):
            assert not module.endswith("cli") or module.endswith("interop.cli"), (
                f"{path.relative_to(SRC)} imports {module}"
            )
