"""megaclap's import graph: no cycles, and configuration (megaclap/config/) at the bottom.

The graph is read from the source with `ast`, not by importing: every import statement counts,
including those inside functions (a function-level import hides a cycle from Python's loader
but not from the reader). A node is a module (a package is its __init__); `from pkg import x`
is an edge to pkg.x when x is a submodule, else to pkg. Dynamic imports (importlib with a
computed name, as in megaclap/data/__init__.py) are not seen.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megaclap")


def _modules(root: str = ROOT) -> dict:
    """{dotted module name: file path} for every .py file under megaclap/."""
    found = {}
    base = os.path.dirname(root)
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, base)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative levels resolved)."""
    if not node.level:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: str, modules: dict) -> set:
    """megaclap modules that `module` imports anywhere in its source."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else source)
    return {t for t in targets if t in modules and t != module}


def import_graph(root: str = ROOT) -> dict:
    modules = _modules(root)
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_imports_nothing_else_from_megaclap():
    graph = import_graph()
    assert "megaclap.config" in graph, "megaclap/config/ is a package"
    upward = sorted(f"{m} imports {t}" for m, targets in graph.items()
                    if m == "megaclap.config" or m.startswith("megaclap.config.")
                    for t in targets if t != "megaclap.config" and not t.startswith("megaclap.config."))
    assert not upward, "megaclap/config must sit at the bottom of the import graph: " + "; ".join(upward)


def _write(tmp_path, files: dict) -> str:
    root = tmp_path / "megaclap"
    for name, text in files.items():
        (root / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


@pytest.mark.parametrize("files", [
    {"__init__.py": "", "a.py": "from megaclap.b import x\n", "b.py": "def f():\n    import megaclap.a\n"},
    {"__init__.py": "", "p/__init__.py": "", "p/a.py": "from . import b\n", "p/b.py": "from .a import y\n"},
    {"__init__.py": "", "p/__init__.py": "", "p/a.py": "from ..q import c\n",
     "q/__init__.py": "", "q/c.py": "from megaclap.p import a\n"},
])
def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path, files):
    """The checker itself: cycles through a function-level import and relative imports are found."""
    assert find_cycle(import_graph(_write(tmp_path, files))) is not None


def test_cycle_finder_accepts_a_dag(tmp_path):
    root = _write(tmp_path, {"__init__.py": "", "p/__init__.py": "from .a import x\n",
                             "p/a.py": "from megaclap.q import c\n", "q/__init__.py": "", "q/c.py": "import os\n"})
    assert find_cycle(import_graph(root)) is None
