"""The packages' import graph has no cycle: every module of model/ and service/ can be read, and
changed, knowing only what it imports (function-level imports count too: a lazy import that
hides a cycle is still one)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "service")


def _imports() -> dict[str, set[str]]:
    """Each module's name and the project modules it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                found |= {n for n in names if n.split(".")[0] in PACKAGES}
            graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep in graph and dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_model_and_service_import_no_cycle() -> None:
    graph = _imports()
    assert {"model.checkpoints", "model.hf", "model.weights", "service.app"} <= graph.keys()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_pipeline_knows_no_http() -> None:
    """Routes read requests (service/http/); the pipeline takes images, a deadline and a signal."""
    tree = ast.parse((ROOT / "service" / "pipeline.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    web = {m for m in modules if m.split(".")[0] in ("starlette", "fastapi", "uvicorn") or m.startswith("service.http")}
    assert not web, web
