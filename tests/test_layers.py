"""The layers: the kernel (``rtopt``) imports no stream operator, handler or front-end; ``rtopt.streams``
no handler or front-end; ``rtopt.handlers`` no front-end.

The folders ``streams/``, ``handlers/`` and ``apps/`` install as subpackages of ``rtopt`` (pyproject's
package-dir), a layout import-linter cannot walk, so the rule is read here from every module's imports,
``TYPE_CHECKING`` and function-level ones included. A direct import that goes up a layer is the only way
an indirect one can, so checking every direct import checks them all.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# layer of each source folder, from the bottom; a module may import its own layer and the ones below it
FOLDERS = {"rtopt": 0, "streams": 1, "handlers": 2, "apps": 3}
PACKAGES = {"rtopt.streams": 1, "rtopt.handlers": 2, "rtopt.apps": 3}
OLD_NAMES = ("streams", "handlers", "apps")


def layer_of(module: str) -> int | None:
    """The layer of an imported module, None outside rtopt."""
    for package, layer in PACKAGES.items():
        if module == package or module.startswith(package + "."):
            return layer
    return 0 if module == "rtopt" or module.startswith("rtopt.") else None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``; ``from rtopt import streams`` names rtopt.streams."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def violations(folder: str, source: str, path: str) -> list[str]:
    """Each import of ``source`` (a module in ``folder``) that breaks the layers, as ``path:line: message``."""
    own = FOLDERS[folder]
    found = []
    for line, name in imported_modules(ast.parse(source)):
        if name.split(".")[0] in OLD_NAMES:
            found.append(f"{path}:{line}: imports {name}; the installed name is rtopt.{name}")
            continue
        layer = layer_of(name)
        if layer is not None and layer > own:
            found.append(f"{path}:{line}: {folder} (layer {own}) imports {name} (layer {layer})")
    return found


def source_files() -> list[tuple[str, Path]]:
    return [(folder, path) for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]


def test_no_module_imports_a_layer_above_its_own() -> None:
    found = [
        problem
        for folder, path in source_files()
        for problem in violations(folder, path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("folder", "source", "expected"),
    [
        ("rtopt", "from rtopt.handlers.bandits import BanditHandler", "(layer 0) imports rtopt.handlers.bandits"),
        ("rtopt", "def f():\n    import rtopt.streams.windows", "imports rtopt.streams.windows (layer 1)"),
        ("rtopt", "from rtopt import apps", "imports rtopt.apps (layer 3)"),
        ("streams", "from rtopt.handlers import ledger", "streams (layer 1) imports rtopt.handlers"),
        ("handlers", "if TYPE_CHECKING:\n    from rtopt.apps.views import sources", "imports rtopt.apps.views"),
        ("handlers", "from handlers.ledger import Ledger", "the installed name is rtopt.handlers.ledger"),
    ],
)
def test_an_import_up_a_layer_is_found(folder: str, source: str, expected: str) -> None:
    assert any(expected in problem for problem in violations(folder, source, "x.py"))


@pytest.mark.parametrize(
    ("folder", "source"),
    [
        ("rtopt", "from rtopt.events import Feedback\nimport numpy"),
        ("streams", "from rtopt import Engine"),
        ("handlers", "from rtopt.streams import Aggregates\nfrom rtopt.handlers.ledger import Ledger"),
        ("apps", "from rtopt.handlers.bandits import BanditHandler"),
    ],
)
def test_imports_down_or_within_a_layer_pass(folder: str, source: str) -> None:
    assert violations(folder, source, "x.py") == []


# storage, from the bottom: a module imports only storage modules of a lower rank, and of the rest of rtopt only errors
STORAGE_RANKS = {"interface": 0, "group": 1, "sql": 1, "sqlite": 2, "postgres": 2, "factory": 3}
STORAGE_BASE = (["errors"], ["arguments"], ["storage"])
"""What storage may import: itself and the kernel modules that import nothing of rtopt but errors."""
STORAGE_BASE_RULE = "storage builds on rtopt.errors and rtopt.arguments alone"


def storage_violations(name: str, source: str) -> list[str]:
    """Each import of the storage module ``name`` that reaches up or sideways, or out of storage."""
    found = []
    for line, module in imported_modules(ast.parse(source)):
        parts = module.split(".")
        if parts[:2] == ["rtopt", "storage"] and len(parts) > 2:
            if parts[2] in STORAGE_RANKS and STORAGE_RANKS[parts[2]] >= STORAGE_RANKS[name]:
                found.append(f"rtopt/storage/{name}.py:{line}: imports {'.'.join(parts[:3])}, not below it")
        elif parts[0] == "rtopt" and parts[1:2] not in STORAGE_BASE:
            found.append(f"rtopt/storage/{name}.py:{line}: imports {module}; {STORAGE_BASE_RULE}")
    return found


def test_storage_modules_import_only_those_below_them() -> None:
    paths = sorted((ROOT / "rtopt" / "storage").glob("*.py"))
    assert {path.stem for path in paths} == {*STORAGE_RANKS, "__init__"}
    found = [
        problem
        for path in paths
        if path.stem in STORAGE_RANKS
        for problem in storage_violations(path.stem, path.read_text())
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("sql", "from rtopt.storage.factory import open_log", "imports rtopt.storage.factory, not below it"),
        ("sqlite", "from rtopt.storage.postgres import PostgresLog", "not below it"),
        ("interface", "def f():\n    from rtopt.privacy import Keyring", "storage builds on rtopt.errors and"),
    ],
)
def test_a_storage_import_up_or_out_is_found(name: str, source: str, expected: str) -> None:
    assert any(expected in problem for problem in storage_violations(name, source))


def kernel_imports() -> dict[str, set[str]]:
    """Each kernel module and the kernel modules it imports (``TYPE_CHECKING`` and function-level ones included)."""
    modules = {}
    for path in (ROOT / "rtopt").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = {module_of(imported, modules) for _, imported in imported_modules(ast.parse(path.read_text()))}
        graph[name] = {module for module in imported if module is not None and module != name}
    return graph


def module_of(name: str, modules: Collection[str]) -> str | None:
    """The module of ``modules`` that the imported ``name`` (a module, or a name in one) is in, None outside them.

    >>> module_of("rtopt.storage.factory.open_log", {"rtopt", "rtopt.storage.factory"}), module_of("numpy", {"rtopt"})
    ('rtopt.storage.factory', None)
    """
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def cycle_in(graph: Mapping[str, Collection[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its nodes (the first one repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def test_kernel_modules_import_each_other_without_a_cycle() -> None:
    found = cycle_in(kernel_imports())
    assert found is None, " -> ".join(found or [])


def test_a_cycle_is_found() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
