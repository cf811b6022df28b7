"""The project's import graph, built from the sources (not by importing them): no circle anywhere, the packages
import one way (badja_eval -> tracker -> cosettle), and imports inside functions are only for optional, slow or
platform-only dependencies, each with its reason written beside it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cosettle", "tracker", "badja_eval")
# a package may import only the packages after it in this order
LAYERS = {"badja_eval": {"badja_eval", "tracker", "cosettle"}, "tracker": {"tracker", "cosettle"},
          "cosettle": {"cosettle"}}
DEFER_MARK = "deferred:"   # the comment that explains an import inside a function


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """Absolute module name of a ``from X import ...`` (relative levels resolved against ``importer``)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]):
    """[(target module, line, top_level)] for every import of a project module in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    # imports under a module-level `if TYPE_CHECKING:` / try block are still module level
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, is_pkg, node)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            while t and t not in modules:   # `import a.b.c` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] in PACKAGES and t != name:
                out.append((t, node.lineno, id(node) in top))
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: {t for t, _, _ in imports_of(name, path, modules)} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}) == ["b", "b2", "b"]


def test_graph_builder_sees_relative_and_deferred_imports(tmp_path):
    (tmp_path / "tracker" / "sub").mkdir(parents=True)
    for d in ("cosettle", "badja_eval"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "tracker" / "__init__.py").write_text("from .sub import x\n")
    (tmp_path / "tracker" / "sub" / "__init__.py").write_text("")
    (tmp_path / "tracker" / "sub" / "x.py").write_text("def f():\n    from ..y import g\n")
    (tmp_path / "tracker" / "y.py").write_text("import tracker.sub.x\nfrom cosettle import nothing\n")
    graph = import_graph(tmp_path)
    assert graph["tracker"] == {"tracker.sub.x"}
    assert graph["tracker.sub.x"] == {"tracker.y"}
    assert graph["tracker.y"] == {"tracker.sub.x", "cosettle"}
    assert find_cycle(graph) == ["tracker.sub.x", "tracker.y", "tracker.sub.x"]


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages_import_one_way(pkg):
    modules = module_files()
    bad = [f"{name} imports {t} ({modules[name].relative_to(ROOT)}:{line})"
           for name, path in modules.items() if name.split(".")[0] == pkg
           for t, line, _ in imports_of(name, path, modules) if t.split(".")[0] not in LAYERS[pkg]]
    assert not bad, "\n".join(bad)


def function_level_imports(path: Path) -> list[int]:
    """Line numbers of every import statement (project or not) below module level, except under a module-level
    ``if``/``try`` (optional dependencies, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    return sorted(n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top)


def test_function_level_imports_on_a_hand_made_module(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\ntry:\n    import xformers\nexcept ImportError:\n    pass\n\n\ndef f():\n"
                 "    import json\n    from . import x  # deferred: why\n")
    assert function_level_imports(f) == [9, 10]


def test_imports_inside_functions_say_why():
    """Imports belong at module top; one inside a function (an optional extra, a slow import such as timm, a
    POSIX-only module) is allowed only with a ``# deferred: <reason>`` comment on its line."""
    bad = []
    for path in module_files().values():
        lines = path.read_text().splitlines()
        for line in function_level_imports(path):
            if DEFER_MARK not in lines[line - 1]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert not bad, "imports inside functions without a '# deferred: why' comment:\n" + "\n".join(bad)
