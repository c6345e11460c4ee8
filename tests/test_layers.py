"""The layers: the kernel (``rtopt``) imports no stream operator, handler or front-end; ``rtopt.streams``
no handler or front-end; ``rtopt.handlers`` no front-end.

The folders ``streams/``, ``handlers/`` and ``apps/`` install as subpackages of ``rtopt`` (pyproject's
package-dir), a layout import-linter cannot walk, so the rule is read here from every module's imports,
``TYPE_CHECKING`` and function-level ones included. A direct import that goes up a layer is the only way
an indirect one can, so checking every direct import checks them all.
"""

from __future__ import annotations

import ast
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
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def violations(folder: str, source: str, path: str) -> list[str]:
    """Each import of ``source`` (a module in ``folder``) that breaks the layers, as ``path:line: message``."""
    own = FOLDERS[folder]
    found = []
    for line, module in imported_modules(ast.parse(source)):
        top = module.split(".")[0]
        if top in OLD_NAMES:
            found.append(f"{path}:{line}: imports {module}; the installed name is rtopt.{module}")
            continue
        layer = layer_of(module)
        if layer is not None and layer > own:
            found.append(f"{path}:{line}: {folder} (layer {own}) imports {module} (layer {layer})")
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
