"""The package's modules import one another one way only: no import cycle inside ``src/diffusers_brics``.

Every import statement counts, wherever it stands: at module level, inside functions and classes, and under
``if TYPE_CHECKING:``, since an import deferred into a function only hides a cycle. An import of ``a.b.c`` also
runs the ``__init__`` of each package on the way (``a.b``) that does not already enclose the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = "diffusers_brics"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_files(root: Path = SOURCE, package: str = PACKAGE) -> Dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (a package is its ``__init__.py``)."""
    modules: Dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _imported_names(node: ast.AST, module: str, is_package: bool) -> List[str]:
    """Absolute names of the modules (or module attributes) one import statement asks for."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    return [origin] + [f"{origin}.{alias.name}" for alias in node.names if alias.name != "*"]


def _edges_of(name: str, importer: str, modules: Dict[str, Path]) -> Set[str]:
    """Modules of the package that importing ``name`` from ``importer`` runs: the module itself and each enclosing
    package that does not already enclose ``importer``."""
    parts = name.split(".")
    target: Optional[str] = None
    for end in range(len(parts), 0, -1):  # "pkg.mod.func" -> "pkg.mod"
        if ".".join(parts[:end]) in modules:
            target = ".".join(parts[:end])
            break
    if target is None:
        return set()
    edges = {target}
    enclosing = target.split(".")
    for end in range(1, len(enclosing)):
        package = ".".join(enclosing[:end])
        if not (importer == package or importer.startswith(package + ".")):
            edges.add(package)
    edges.discard(importer)
    return edges


def import_graph(modules: Optional[Dict[str, Path]] = None) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (every import statement, at any depth)."""
    modules = module_files() if modules is None else modules
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _imported_names(node, module, is_package)
                if isinstance(node, ast.ImportFrom):
                    # "from pkg import sub" imports the submodule; "from pkg import name" the package
                    origin, members = names[0], names[1:]
                    subs = [m for m in members if m in modules]
                    names = subs + ([origin] if len(subs) < len(members) or not members else [])
                for name in names:
                    if name == PACKAGE or name.startswith(PACKAGE + "."):
                        targets |= _edges_of(name, module, modules)
        graph[module] = targets
    return graph


def import_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (or a module importing itself), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_checker_sees_deferred_and_relative_imports(tmp_path):
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from .a import f\n")
    (root / "sub" / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (root / "sub" / "b.py").write_text("from diffusers_brics.sub.a import f\n")
    (root / "c.py").write_text("from .sub import b\n")
    graph = import_graph(module_files(root))
    assert graph[f"{PACKAGE}.sub.a"] == {f"{PACKAGE}.sub.b"}
    assert graph[f"{PACKAGE}.sub.b"] == {f"{PACKAGE}.sub.a"}
    assert graph[f"{PACKAGE}.c"] == {f"{PACKAGE}.sub", f"{PACKAGE}.sub.b"}
    assert import_cycles(graph) == [[f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b"]]


def test_no_import_cycles_in_the_package():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (each a set of modules that import one another):\n" + "\n".join(
        "  " + " <-> ".join(cycle) for cycle in cycles
    )
