"""DESIGN.md's layering, checked on the source: imports point down, never up."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genctr"
# package -> modules it must never import (the layers above it)
FORBIDDEN = {
    "models": ("genctr.pretrain", "genctr.testtime", "genctr.runs", "genctr.train", "genctr.experiment"),
    "nn": ("genctr.pretrain", "genctr.testtime", "genctr.runs", "genctr.models", "genctr.train"),
    "data": ("genctr.pretrain", "genctr.testtime", "genctr.runs", "genctr.models", "genctr.train"),
    "testtime": ("genctr.pretrain", "genctr.runs", "genctr.experiment", "genctr.cli"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(package):
    offending = sorted(f"{path.relative_to(SRC)} imports {name}"
                       for path in (SRC / package).rglob("*.py") for name in imported_modules(path)
                       if name.startswith(FORBIDDEN[package]))
    assert offending == []
