"""The package's shape: no import cycles, and no private name imported across modules.

Imports are read with ``ast``, so ``TYPE_CHECKING`` blocks and imports inside
functions count as much as module-level ones: a cycle hidden behind either is
still a cycle for the next person who moves code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tailguard

PACKAGE = Path(tailguard.__file__).parent

ALLOWED_EDGES = {
    # TailguardMiddleware(app, routes=...) builds the guard that install() would
    # have built: the one upward import, inside the constructor, commented there.
    ("tailguard.middleware.asgi", "tailguard.guard"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, ast.alias]]:
    """Each module of the package that ``name`` imports, with the imported alias."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, alias
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:  # `from tailguard import chaos`: the submodule
                    yield submodule, alias
                elif source in known:
                    yield source, alias


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {target for target, _ in imports(name, path, known) if target != name}
        edges[name] = {target for target in targets if (name, target) not in ALLOWED_EDGES}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_tailguard_modules() -> None:
    edges = graph()
    assert len(edges) > 50  # the walk found the package
    assert cycles(edges) == []


def test_the_allowed_upward_import_is_the_only_one_and_still_needed() -> None:
    known = modules()
    for source, target in ALLOWED_EDGES:
        assert target in {name for name, _ in imports(source, known[source], known)}


def test_no_module_imports_a_private_name_of_another() -> None:
    """Private (underscore) *names* stay in their module; private modules may be imported."""
    known = modules()
    crossing = []
    for name, path in known.items():
        for target, alias in imports(name, path, known):
            imported = alias.name.rpartition(".")[2]
            is_module = f"{target}" == f"{target.rpartition('.')[0]}.{imported}" or (
                f"{target}.{imported}" in known
            )
            private = imported.startswith("_") and not imported.startswith("__")
            if target != name and private and not is_module:
                crossing.append(f"{name} imports {target}.{imported}")
    assert crossing == []
