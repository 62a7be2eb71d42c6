"""The package graph stays layered: the contracts cover every package, and the tests of a
lower layer import no higher one.

``lint-imports`` (run by tests/run.sh after ruff) checks the code against the contracts in
pyproject.toml: layers, synth and mlflow confined, no cycles inside a package. This file
checks what import-linter cannot see: that no top-level package escapes the contracts, and
that tests/<layer>/ (plus the test helpers it imports) stays below ``workflows`` the same
way its package does, so a lower layer's tests run and fail on their own.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS: list[str] = next(c for c in CONFIG["contracts"] if c["id"] == "layers")["layers"]


def top_level_packages() -> set[str]:
    """Folders of the repository that are Python packages (tests aside)."""
    return {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}


def test_every_package_is_under_the_contracts() -> None:
    packages = top_level_packages()
    assert packages <= set(CONFIG["root_packages"]), "add the new package to [tool.importlinter]"
    assert packages <= set(LAYERS) | {"synth"}, "place the new package in the layers contract"
    acyclic = next(c for c in CONFIG["contracts"] if c["type"] == "acyclic_siblings")
    assert set(acyclic["ancestors"]) == set(CONFIG["root_packages"])


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute imports of a file (module level and inside functions: lazy ones count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _helper_file(module: str, folder: Path) -> Path | None:
    """The file of a test helper: ``tests.x.y`` or a sibling module (``fusion_toys``)."""
    parts = module.split(".")
    if parts[0] == "tests":
        base = REPO.joinpath(*parts)
    elif (folder / f"{parts[0]}.py").is_file():
        base = folder.joinpath(*parts)
    else:
        return None
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def higher_layer_imports(layer: str) -> list[str]:
    """``file:line module`` for every import of a higher layer by tests/<layer>/ or a test
    helper it imports (followed transitively)."""
    higher = set(LAYERS[: LAYERS.index(layer)])
    todo = sorted((REPO / "tests" / layer).rglob("*.py"))
    seen: set[Path] = set()
    found = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for line, module in _imports(path):
            if module.split(".")[0] in higher:
                found.append(f"{path.relative_to(REPO)}:{line} {module}")
            helper = _helper_file(module, path.parent)
            if helper is not None:
                todo.append(helper)
    return sorted(found)


@pytest.mark.parametrize(
    "layer", [m for m in LAYERS if (REPO / "tests" / m).is_dir() and m != LAYERS[0]]
)
def test_lower_layer_tests_do_not_import_higher_layers(layer: str) -> None:
    assert higher_layer_imports(layer) == []


def test_the_check_finds_a_higher_layer_import(tmp_path: Path) -> None:
    """The scan sees lazy imports and imports through helpers (it can fail)."""
    helper = tmp_path / "helper.py"
    helper.write_text("def f():\n    from workflows.config import load_config\n")
    test = tmp_path / "test_x.py"
    test.write_text("import helper\nfrom registry import Tracker\n")
    assert [m for _, m in _imports(helper)] == ["workflows.config"]
    assert _helper_file("helper", tmp_path) == helper
    assert [m for _, m in _imports(test)] == ["helper", "registry"]
