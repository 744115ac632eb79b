"""Module boundaries, checked on the source with ``ast`` (nothing is imported):

* no module of ``sqsam_core`` imports an adapter or the training package (``sqsam_label_studio``,
  ``sqsam_cvat``, ``sqsam_train``), by an import statement or ``importlib.import_module("...")``,
  and none touches ``sys.path``;
* the project's four packages have no import cycle, counting module-level and function-level
  imports alike.

How an import becomes an edge of the graph: ``import a.b.c`` and ``from a.b import c`` (where
``a.b.c`` is a module) point at the module ``a.b.c`` itself, ``from a.b import name`` (a name
defined in ``a/b/__init__.py``) at the package ``a.b``. Python also runs every parent package's
``__init__`` on the way to a submodule; those implicit edges are left out, because otherwise a
package ``__init__`` that re-exports its submodules' names (``sqsam_core.bench``) would form a
"cycle" with every submodule that imports a sibling, although each module only ever imports
modules that do not import it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: import name -> source folder (pyproject.toml's package-dir)
PACKAGES = {
    "sqsam_core": REPO / "sqsam_core",
    "sqsam_train": REPO / "models" / "sqsam_train",
    "sqsam_label_studio": REPO / "integrations" / "label_studio" / "sqsam_label_studio",
    "sqsam_cvat": REPO / "integrations" / "cvat" / "sqsam_cvat",
}
NOT_IN_CORE = ("sqsam_label_studio", "sqsam_cvat", "sqsam_train")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the project's packages."""
    modules = {}
    for name, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([name, *parts])] = path
    return modules


MODULES = project_modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imported_names(module: str, tree: ast.AST) -> list[tuple[str, int]]:
    """``(dotted name, line)`` of everything ``module`` imports, anywhere in its body.

    ``from X import a`` gives ``X.a`` when that is a project module, else ``X``; relative
    imports are resolved against ``module``'s package. ``importlib.import_module("name")`` with
    a literal name counts as an import of ``name``.
    """
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in MODULES else base, node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.args[0].value, node.lineno))
    return found


def touches_sys_path(tree: ast.AST) -> list[int]:
    """Lines that read or change ``sys.path`` (``sys.path.insert``, ``from sys import path``...)."""
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ("path", "path_hooks", "meta_path")
                and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(
                alias.name in ("path", "path_hooks", "meta_path") for alias in node.names):
            lines.append(node.lineno)
    return lines


def parse(module: str) -> ast.AST:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (resolved to the nearest existing module or package)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = set()
        for name, _ in imported_names(module, parse(module)):
            while name and name not in MODULES:  # "sqsam_core.bench.sam.VARIANTS" -> "sqsam_core.bench.sam"
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_every_package_is_found():
    for name, root in PACKAGES.items():
        assert (root / "__init__.py").is_file(), root
        assert name in MODULES
    assert len([m for m in MODULES if m.startswith("sqsam_core.")]) > 10


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] == "sqsam_core"))
def test_core_imports_no_adapter_and_leaves_sys_path_alone(module):
    tree = parse(module)
    bad = [f"line {line}: {name}" for name, line in imported_names(module, tree)
           if name.split(".")[0] in NOT_IN_CORE]
    assert not bad, f"{MODULES[module]} imports outside the core: {bad}"
    lines = touches_sys_path(tree)
    assert not lines, f"{MODULES[module]} touches sys.path on line(s) {lines}"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


# The checks themselves, on small sources: they must fail where they should.


def test_checks_catch_what_they_look_for(monkeypatch):
    tree = ast.parse("import sys\n"
                     "def f():\n"
                     "    import sqsam_label_studio.app\n"
                     "    sys.path.insert(0, 'x')\n"
                     "    importlib.import_module('sqsam_train.network')\n")
    names = [n for n, _ in imported_names("sqsam_core.cli", tree)]
    assert "sqsam_label_studio.app" in names and "sqsam_train.network" in names
    assert touches_sys_path(tree) == [4]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_modules():
    tree = ast.parse("from .errors import ConfigError\nfrom . import images\nfrom ..sqsam_core import x\n")
    names = [n for n, _ in imported_names("sqsam_label_studio.app", tree)]
    assert names[:2] == ["sqsam_label_studio.errors", "sqsam_label_studio.images"]


def test_every_package_folder_is_packaged():
    """pyproject.toml lists packages one by one: a new subpackage left out would be missing from the wheel."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for module, path in MODULES.items():
        if path.name == "__init__.py":
            assert module in listed, f"{module} ({path.parent}) is not in pyproject.toml's packages"
