"""No import cycles among the project's modules: the dependency arrows point one way, inside packages too.

The graph is built from the source with `ast`: every `import` and `from … import` counts, at module level, inside
functions and under `if TYPE_CHECKING:` alike. An edge goes to the module that is named (`from a.b import c` goes
to `a.b.c` when that is a module, else to `a.b`); the implicit import of parent packages is not an edge, so a
package's `__init__` may re-export its submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Top-level packages of the project; a package that does not exist (yet) is skipped.
PACKAGES = ("api_schemas", "server", "worker", "ris_model", "client")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Module name → file, for every .py file of the project's packages."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        if (ROOT / package / "__init__.py").is_file():
            for path in sorted((ROOT / package).rglob("*.py")):
                modules[_module_name(path)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted `name` that is a project module, or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The project modules one import statement names."""
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = _resolve(alias.name, modules)
            if target is not None:
                targets.add(target)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            full = f"{base}.{alias.name}"
            target = full if full in modules else _resolve(base, modules)
            if target is not None:
                targets.add(target)
    return targets


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its source (self-imports dropped)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            edges |= _imported(node, module, is_package, modules)
        edges.discard(module)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module: `a → b → … → a`."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    components = strongly_connected(graph)
    assert components == [["a", "b", "c"]]
    assert cycle_in(components[0], graph) == ["a", "b", "c", "a"]


def test_graph_counts_function_level_type_checking_and_relative_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\nfrom . import b\nif TYPE_CHECKING:\n    from pkg.c import X\n"
        "def f():\n    import pkg.d\n"
    )
    modules = {"pkg": ROOT, "pkg.a": ROOT, "pkg.b": ROOT, "pkg.c": ROOT, "pkg.d": ROOT}
    edges: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        edges |= _imported(node, "pkg.a", False, modules)
    assert edges == {"pkg.b", "pkg.c", "pkg.d"}


def test_project_has_no_import_cycles() -> None:
    modules = project_modules()
    assert "server.main" in modules and "worker.tasks" in modules
    graph = import_graph(modules)
    cycles = [" → ".join(cycle_in(component, graph)) for component in strongly_connected(graph)]
    print("\n".join(cycles))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
