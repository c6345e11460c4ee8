"""Start-up stays light: importing rtopt, a process's first event and the command line's start-up load no
heavy module they do not use (each checked in a fresh interpreter; benchmarks/import_time.py times them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rtopt import Engine, Feedback

HEAVY = ("sqlite_utils", "numpy", "scipy", "panel", "holoviews", "psycopg", "river", "pandas", "cryptography")
"""Slow to import: each must wait until it is used."""
SCIPY_PARTS = ("scipy.stats", "scipy.optimize", "scipy.linalg", "scipy.special")
"""scipy itself is quick to import; its submodules are not."""
PUBLISH = """
import sys
from rtopt import Engine, Feedback
with Engine.open(sys.argv[1], seed=7) as engine:
    engine.publish(
        Feedback(prompt_id="p", variant_id="v1", response_time_ms=9.0, success=True, quality_score=0.5), time=2.0
    )
"""


def loaded_after(code: str, *argv: str) -> list[str]:
    """The modules of HEAVY and SCIPY_PARTS that a fresh interpreter holds after running ``code``."""
    report = f"\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY + SCIPY_PARTS!r} if m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code + report, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_import_rtopt_loads_no_heavy_module() -> None:
    assert loaded_after("import rtopt") == []


def test_the_first_event_on_an_existing_log_loads_no_schema_tool_no_cipher_and_no_scipy_part(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=7) as engine:
        engine.publish(
            Feedback(prompt_id="p", variant_id="v1", response_time_ms=120.0, success=True, quality_score=0.8), time=1.0
        )

    # numpy and river are the handlers' per-event tools; scipy's package is imported, its parts are not
    assert loaded_after(PUBLISH, str(path)) == ["numpy", "river", "scipy"]
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        assert [e.time for e in engine.read(types=[Feedback])] == [1.0, 2.0]


def test_the_command_line_builds_every_command_without_the_dashboard_or_scipy_parts() -> None:
    loaded = loaded_after("from rtopt.cli import build_parser\nbuild_parser()")

    # numpy comes with the bandit policies that `rtopt simulate` offers as choices; scipy's parts wait
    assert loaded == ["numpy", "scipy"]


def test_one_blas_thread_holds_scipys_blas_too_when_scipy_linalg_loads_after_the_handler() -> None:
    code = (
        "from threadpoolctl import threadpool_info\n"
        "from rtopt.handlers.bayesopt.gp import one_blas_thread\n"
        "with one_blas_thread():\n"
        "    blas = {lib['filepath']: lib['num_threads'] for lib in threadpool_info() if lib['user_api'] == 'blas'}\n"
        "assert any('scipy.libs' in path for path in blas) and set(blas.values()) == {1}, blas"
    )

    assert loaded_after(code) == ["numpy", "scipy", "scipy.linalg"]
