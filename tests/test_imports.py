"""The package's import graph: layers import only downwards, nothing imports the command line,
no module imports another module's private name, and there is no cycle.

Every ``import`` statement of every module counts, including those inside functions (a
function-level import is still a dependency, only a deferred one).
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "m2k_bt"
PACKAGE = "m2k_bt"

#: The layers, lowest first. A module may import its own layer and the layers below it.
LAYERS = (
    ("errors", "contracts", "sessions", "outputs"),  # facts and infrastructure
    ("rules",),  # the rulebook: each trading rule once, for both engines
    ("indicators", "brokers", "sizers"),  # backtrader plug-ins
    ("feeds",),  # data
    ("strategies",),
    ("analyzers",),
    ("engine",),  # a configuration resolved into a plan, cerebro's wiring, the result
    ("kernel",),  # the compiled engine
    ("ib",),  # live trading through Interactive Brokers
    ("report",),
    ("optimize",),  # studies, walk-forward, overfitting statistics
    ("cli",),
    ("__init__",),
)
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules(root: Path = PKG) -> dict[str, Path]:
    """Dotted module name (relative to the package) -> file; a package's ``__init__`` is named
    after its folder, the root package ``__init__``."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, modules: set[str]) -> str:
    """The module ``name`` refers to: itself, or the longest enclosing module that exists."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or "__init__"


def _imports(path: Path, self_name: str, modules: set[str]) -> list[tuple[str, str]]:
    """(module imported, name imported or "") for each import of the package in ``path``."""
    is_pkg = path.name == "__init__.py"
    here = self_name.split(".") if self_name != "__init__" else []
    package = here if is_pkg else here[:-1]
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                dotted = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                dotted = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:
                sub = f"{dotted}.{alias.name}" if dotted else alias.name
                if sub in modules:  # from . import engine: the module itself
                    found.append((sub, ""))
                else:
                    found.append((_resolve(dotted, modules), alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append((_resolve(alias.name.partition(".")[2], modules), ""))
    return found


def _deps(path: Path, self_name: str, modules: set[str]) -> set[str]:
    return {m for m, _ in _imports(path, self_name, modules)} - {self_name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _deps(path, name, set(modules)) for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_reader_sees_function_level_relative_and_nested_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "kernel").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import kernel\n")
    (pkg / "errors.py").write_text("")
    (pkg / "kernel" / "__init__.py").write_text("from .loop import run\n")
    (pkg / "kernel" / "loop.py").write_text(
        "from ..errors import ConfigError\n"
        "import m2k_bt.errors\n"
        "def f():\n"
        "    from .. import __version__\n"
        "    from . import simulation\n"
        "    from ..kernel.simulation import _private\n"
    )
    (pkg / "kernel" / "simulation.py").write_text("")
    mods = _modules(pkg)
    assert set(mods) == {"__init__", "errors", "kernel", "kernel.loop", "kernel.simulation"}
    found = _imports(mods["kernel.loop"], "kernel.loop", set(mods))
    assert found == [("errors", "ConfigError"), ("errors", ""), ("__init__", "__version__"),
                     ("kernel.simulation", ""), ("kernel.simulation", "_private")]
    assert _imports(mods["kernel"], "kernel", set(mods)) == [("kernel.loop", "run")]
    assert _imports(mods["__init__"], "__init__", set(mods)) == [("kernel", "")]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_in_a_layer():
    assert {_layer(m) for m in _modules()} - set(LEVEL) == set()


def test_layers_import_only_downwards():
    upward = {
        name: sorted(d for d in deps if LEVEL[_layer(d)] > LEVEL[_layer(name)])
        for name, deps in import_graph().items()
    }
    assert {k: v for k, v in upward.items() if v} == {}


def test_library_modules_never_import_the_command_line():
    graph = import_graph()
    offenders = {
        name: sorted(d for d in deps if _layer(d) == "cli")
        for name, deps in graph.items()
        if _layer(name) not in ("cli", "__init__")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_imports_another_modules_private_name():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for mod, imported in _imports(path, name, set(modules)):
            if mod != name and imported.startswith("_") and not imported.startswith("__"):
                offenders.append(f"{name} imports {mod}.{imported}")
            if mod.rpartition(".")[2].startswith("_"):
                offenders.append(f"{name} imports the private module {mod}")
    assert offenders == []


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "optimize.study" in graph["optimize.walkforward"]  # real edges to search
    assert _find_cycle(graph) is None


def test_no_module_is_over_1200_lines():
    lines = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
    long = {name: n for name, n in lines.items() if n > 1200}
    assert long == {}
