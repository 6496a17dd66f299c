"""The package's modules import one another one way only: no import cycle inside ``src/diffusers_brics``.

Every import statement counts, wherever it stands: at module level, inside functions and classes, and under
``if TYPE_CHECKING:``, since an import deferred into a function only hides a cycle. An import of ``a.b.c`` also
runs the ``__init__`` of each package on the way (``a.b``) that does not already enclose the importing module.

And the test suite keeps one copy of each helper: no function, class or constant defined in two modules of ``tests/``
but tests, fixtures and the few `SHARED_NAMES`.
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


# ------------------------------------------------------------------------------------------------- the test suite
TESTS = Path(__file__).resolve().parent

# Names that several modules of tests/ may each define, and why. Any other function, class or constant defined in
# two of them is a copy: it belongs once in tests/builders.py (or as a fixture of tests/conftest.py), imported where
# it is used.
SHARED_NAMES = {
    "ROOT": "the repository root, `Path(__file__).resolve().parents[1]`: an expression of the module's own path, "
    "not a builder; importing tests/builders.py for it would import diffusers and the package into modules that "
    "need neither (and into conftest.py before it sets TRITON_INTERPRET)",
    "BENCHMARKS": "`ROOT / 'benchmarks'`, which each benchmark test module puts on sys.path when it is imported",
    "pytestmark": "pytest reads the marks of each module from this name",
}


def _is_fixture(node: ast.AST) -> bool:
    """Whether ``node`` is a function decorated with ``pytest.fixture`` (or ``fixture``), bare or called."""
    for decorator in getattr(node, "decorator_list", []):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target).split(".")[-1] == "fixture":
            return True
    return False


def _assigned(target: ast.AST) -> List[str]:
    """The names an assignment's target binds: ``A``, ``A, B``, ``[A, *B]``; none for ``a.b`` or ``a[0]``."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Starred):
        return _assigned(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _assigned(element)]
    return []


def defined_names(path: Path) -> Dict[str, int]:
    """Name -> line of each function, class and constant ``path`` defines at its top level (inside a top-level
    ``if`` or ``try`` too), less tests (``test_*``, ``Test*``) and pytest fixtures, which each module has its own."""
    names: Dict[str, int] = {}
    statements = list(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body)
    while statements:
        node = statements.pop(0)
        if isinstance(node, (ast.If, ast.Try)):
            statements[:0] = [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            statements[:0] = [child for handler in getattr(node, "handlers", []) for child in handler.body]
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found = [] if _is_fixture(node) else [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = [name for target in targets for name in _assigned(target)]
        else:
            continue
        for name in found:
            if not name.startswith(("test_", "Test")):
                names.setdefault(name, node.lineno)
    return names


def names_defined_twice(folder: Path = TESTS, allowed: Optional[Dict[str, str]] = None) -> Dict[str, List[str]]:
    """Name -> ``file:line`` of each definition, for the names that two or more ``*.py`` files of ``folder`` define
    (`defined_names`), less ``allowed`` (default: `SHARED_NAMES`)."""
    allowed = SHARED_NAMES if allowed is None else allowed
    where: Dict[str, List[str]] = {}
    for path in sorted(folder.glob("*.py")):
        for name, line in defined_names(path).items():
            where.setdefault(name, []).append(f"{path.name}:{line}")
    return {name: places for name, places in sorted(where.items()) if len(places) > 1 and name not in allowed}


def test_the_copy_checker_skips_tests_fixtures_and_the_shared_names(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest\nROOT = 1\nLIMIT, STEPS = 2, 3\n"
        "@pytest.fixture\ndef models():\n    pass\n"
        "def helper():\n    pass\ndef test_one():\n    pass\nclass TestMore:\n    pass\n"
    )
    (tmp_path / "test_b.py").write_text(
        "import os, pytest\nROOT = 1\nif True:\n    STEPS = 4\n"
        "@pytest.fixture(scope='module')\ndef models():\n    pass\n"
        "def helper(x: int) -> int:\n    return x\ndef test_one():\n    pass\nclass TestMore:\n    pass\n"
    )
    (tmp_path / "builders.py").write_text("class Helper:\n    pass\nLIMIT: int = 2\nos.environ['X'] = '1'\n")
    (tmp_path / "conftest.py").write_text("import os\nos.environ['X'] = '1'\n")
    assert names_defined_twice(tmp_path, allowed={"ROOT": "the repository root"}) == {
        "LIMIT": ["builders.py:3", "test_a.py:3"],
        "STEPS": ["test_a.py:3", "test_b.py:4"],
        "helper": ["test_a.py:7", "test_b.py:8"],
    }
    assert "ROOT" in names_defined_twice(tmp_path, allowed={})


def test_no_helper_is_defined_in_two_test_modules():
    copies = names_defined_twice()
    assert not copies, (
        "defined in several modules of tests/ (keep one in tests/builders.py or tests/conftest.py and import it, "
        "rename one that is something else, or add the name to SHARED_NAMES with a reason):\n"
        + "\n".join(f"  {name}: {', '.join(places)}" for name, places in copies.items())
    )
