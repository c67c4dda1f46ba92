"""The floor plan's contracts, read from the source with ``ast`` (nothing is imported):

- no import cycle anywhere in the product, counting every import (lazy ones inside functions
  too: a lazy import that closes a circle is still a circle) and the package ``__init__`` that
  importing a submodule runs;
- dependencies point inward: ``transforms`` (pure) ← ``connectors`` (the edges) ←
  ``replicator`` (orchestration) ← ``replicator.cli``. The exception tree,
  ``replicator.errors``, is a leaf that every layer may import;
- the pgoutput decoder and the walsender framing import the standard library only;
- no module over 600 lines, no product folder with more than 12 modules.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("replicator", "connectors", "transforms")
LEAF = "replicator.errors"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lands in (a name may be an attribute of it)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    """module → the project modules that importing it executes directly."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _ in _imports(module, path):
            target = _resolve(name)
            if target is None or target == module:
                continue
            # Importing a.b.c runs a, a.b, then a.b.c; a module's own packages are already
            # being imported when it runs, so they add no edge.
            for dep in [*_parents(target), target]:
                if dep != module and dep not in _parents(module):
                    graph[module].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (break them by moving the shared piece down):\n" + "\n".join(
        " ↔ ".join(c) for c in cycles
    )


def _violations() -> list[str]:
    bad: list[str] = []
    for module, path in MODULES.items():
        layer = module.split(".")[0]
        for name, line in _imports(module, path):
            target = _resolve(name)
            if target is None:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if target == LEAF or (target.split(".")[0] == layer and layer != "replicator"):
                continue
            if layer == "transforms" and not target.startswith("transforms"):
                bad.append(f"{where} (transforms are pure: they import no other layer)")
            elif layer == "connectors" and not target.startswith(("connectors", "transforms")):
                bad.append(f"{where} (connectors take plain values, never the orchestration)")
            elif (
                layer == "replicator"
                and not module.startswith(("replicator.cli", "replicator.__main__"))
                and target.startswith("replicator.cli")
            ):
                bad.append(f"{where} (the CLI is the outermost layer)")
    return bad


def test_dependencies_point_inward() -> None:
    bad = _violations()
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["connectors.pgoutput", "connectors.walframe"])
def test_the_decoder_imports_the_standard_library_only(module: str) -> None:
    names = {n.split(".")[0] for n, _ in _imports(module, MODULES[module])}
    foreign = {n for n in names if n not in sys.stdlib_module_names and n != "__future__"}
    assert not foreign, f"{module} imports {sorted(foreign)}"


def test_modules_and_folders_stay_small() -> None:
    big = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > 600
    ]
    assert not big, "modules over 600 lines (split by responsibility): " + ", ".join(big)
    folders: dict[Path, int] = {}
    for p in MODULES.values():
        if p.name != "__init__.py":
            folders[p.parent] = folders.get(p.parent, 0) + 1
    crowded = [f"{d.relative_to(ROOT)} ({n})" for d, n in folders.items() if n > 12]
    assert not crowded, "folders over 12 modules (make rooms): " + ", ".join(crowded)


def test_the_contract_catches_a_cycle_and_an_outward_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
