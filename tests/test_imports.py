"""The package's import graph: the library never imports the command line, and has no cycle.

Every ``import`` statement of every module counts, including those inside functions (a
function-level import is still a dependency, only a deferred one).
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "m2k_bt"
PACKAGE = "m2k_bt"


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PKG.glob("*.py"))}


def _deps(path: Path, modules: set[str]) -> set[str]:
    """Names of the package's modules ``path`` imports (``__init__`` for the package itself)."""
    deps: set[str] = set()

    def add(dotted: str, names: list[str]) -> None:
        # dotted is relative to the package: "" for the package itself, "engine", ...
        head = dotted.split(".")[0] if dotted else ""
        if head:
            deps.add(head)
            return
        for name in names:  # from . import engine, __version__
            deps.add(name if name in modules else "__init__")

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 1:
                add(node.module or "", names)
            elif node.level == 0 and node.module and node.module.split(".")[0] == PACKAGE:
                add(node.module.partition(".")[2], names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name.partition(".")[2], ["__init__"])
    deps.discard(path.stem)
    return deps


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _deps(path, set(modules)) for name, path in modules.items()}


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


def test_graph_reader_sees_function_level_and_relative_imports(tmp_path):
    mod = tmp_path / "demo.py"
    mod.write_text(
        "from .errors import ConfigError\n"
        "import m2k_bt.feeds\n"
        "from m2k_bt.contracts import M2K\n"
        "def f():\n"
        "    from . import engine, __version__\n"
        "    from .cli import main\n"
    )
    names = {"errors", "feeds", "contracts", "engine", "cli", "demo"}
    assert _deps(mod, names) == {"errors", "feeds", "contracts", "engine", "__init__", "cli"}
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_modules_never_import_the_command_line():
    graph = import_graph()
    offenders = {
        name: sorted(d for d in deps if d.startswith("cli"))
        for name, deps in graph.items()
        if not name.startswith("cli")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "optimize" in graph["walkforward"]  # real edges to search
    assert _find_cycle(graph) is None
