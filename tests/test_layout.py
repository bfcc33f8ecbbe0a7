"""The package's shape: no import cycles, `models/` self-contained, files of a readable size, and a
short `pipeline.generate` (plan, then encode -> sample -> decode)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import stable_audio_3
from stable_audio_3 import pipeline

ROOT = Path(stable_audio_3.__file__).parent
PACKAGE = "stable_audio_3"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports anywhere (function bodies included), resolved to module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def test_no_import_cycles() -> None:
    edges = graph()
    # A package __init__ that re-exports its own submodules is not a cycle of jobs: leave those edges out.
    edges = {m: {d for d in deps if not (m.startswith(d + ".") or (edges.get(d) and m in edges[d]
                                                                   and d == m.rsplit(".", 1)[0]))}
             for m, deps in edges.items()}
    seen, stack, cycles = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(edges[m]):
            visit(d)
        stack.pop()

    for m in sorted(edges):
        visit(m)
    assert cycles == []


def test_models_import_only_models() -> None:
    for name, deps in graph().items():
        if name.startswith(f"{PACKAGE}.models"):
            outside = {d for d in deps if not d.startswith(f"{PACKAGE}.models")}
            assert outside == set(), name


def test_no_package_file_over_600_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 600} == {}


def test_generate_is_short() -> None:
    assert len(inspect.getsource(pipeline.generate).splitlines()) <= 60
