"""How rtopt installs: under one top-level name, so a user's own ``handlers`` or ``apps`` package is left alone."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_under_its_installed_name() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {installed: folder for installed, folder in setuptools["package-dir"].items()}
    found = set()
    for installed, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([installed, *relative.parts]))
    assert sorted(found) == sorted(setuptools["packages"])


def test_a_project_with_its_own_handlers_streams_and_apps_packages_runs_the_engine(tmp_path: Path) -> None:
    for name in ("handlers", "streams", "apps"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("MINE = True\n")
    script = (
        "import handlers, streams, apps\n"
        "from rtopt import Engine\n"
        "engine = Engine.open(':memory:')\n"
        "engine.define_experiment('greeting', ['v1', 'v2'])\n"
        "print(engine.decide('greeting').arm in {'v1', 'v2'}, handlers.MINE, streams.MINE, apps.MINE)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True"]


def test_importing_the_kernel_loads_no_handler_stream_operator_or_front_end() -> None:
    script = (
        "import sys, rtopt, rtopt.engine, rtopt.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('rtopt.handlers', 'rtopt.streams', 'rtopt.apps'))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
