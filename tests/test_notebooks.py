"""The notebooks run from top to bottom (each writes the log it reads) and their assertions hold."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_are_found() -> None:
    assert [path.name for path in NOTEBOOKS] == ["01_explore.ipynb", "02_what_if_replay.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_and_its_assertions_hold(path: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert (tmp_path / "event_log").is_dir()
    if path.stem == "01_explore":  # the live dashboard rendered inline as a Panel object
        (shown,) = [cell for cell in notebook.cells if "live = dashboard(live_engine" in cell.source]
        assert any("application/vnd.holoviews_exec.v0+json" in output.get("data", {}) for output in shown.outputs)
