"""Imports only go down the layers (STYLE.md section 1); ring/ and disk/ never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "shmbroker"
# layer -> the layers it may import from (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "records": {"errors", "codecs"},
    "codecs": {"errors"},  # compression of the records block; only records.py uses it
    "config": {"errors"},
    "ring": {"records", "errors", "config"},
    "disk": {"records", "errors", "config"},
    "net": {"disk", "records", "errors", "config"},
    "client": {"records", "ring", "net", "errors", "config", "disk"},
    "workers": {"records", "ring", "disk", "net", "errors", "config", "client"},
    "cli": {"records", "ring", "disk", "net", "errors", "config", "client", "workers"},
    "__init__": {"client", "errors", "records", "config"},
    "__main__": {"cli"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shmbroker."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("shmbroker."))
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{layer} is not a known layer; add it to ALLOWED"
    bad = {m for m in _imports(path) if m != layer and m not in ALLOWED[layer]}
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(bad)}"
