"""The fusion package's modules import each other without cycles (lazy imports included).

A cycle (train -> distributed -> experiment -> scoring -> predictor -> train was one) makes
import order matter and hides layering mistakes; the torchrun entry point now lives in
``workflows.train_worker`` so the DDP primitives import nothing above the loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

FUSION = Path(__file__).resolve().parents[2] / "fusion"


def _graph() -> dict[str, set[str]]:
    """``fusion.<module>`` -> the ``fusion.<module>``s it imports anywhere in its file."""
    mods = {f"fusion.{p.relative_to(FUSION).with_suffix('').as_posix().replace('/', '.')}": p
            for p in FUSION.rglob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_import_cycles_in_fusion() -> None:
    graph = _graph()
    cycles = sorted(m for m in graph if m in _reaches(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_loop_and_ddp_primitives_do_not_import_experiment_code() -> None:
    graph = _graph()
    for low in ("fusion.train", "fusion.distributed"):
        above = _reaches(graph, low) & {"fusion.experiment", "fusion.run_folder"}
        assert not above, f"{low} imports {above}"
