"""The package reads top to bottom: cli → methods → engine → eval → data/augment/models/probes →
config/console/losses/runs/targets/report/tensorboard_events/utils → errors. Every import (at the top of a file or
inside a function) goes down a layer or stays in its own, and no file imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fewlabels"
LAYERS = [
    {"__init__", "__main__", "cli", "commands"},
    {"methods"},
    {"engine"},
    {"eval"},
    {"data", "augment", "models", "probes"},
    {"config", "console", "distributed", "losses", "runs", "targets", "report", "tensorboard_events", "utils"},
    {"errors"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module(p: Path) -> str:
    parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """fewlabels module → the fewlabels modules it imports (relative imports resolved)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for mod, p in modules.items():
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names]
                found |= {n for n in names if n in modules} or {target}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        out[mod] = {t for t in found if t in modules and t != mod}
    return out


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_only_go_down_the_layers():
    graph = _imports()
    assert set(map(_top, graph)) <= set(RANK), "a new top-level module needs its place in LAYERS"
    upward = sorted(f"{m} → {t}" for m, targets in graph.items() for t in targets if RANK[_top(t)] < RANK[_top(m)])
    assert not upward, f"imports up the layers: {upward}"


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if _top(t) == "__init__" or t.endswith("__init__"):
                continue
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, f"import cycle: {' → '.join(cycle)}"
