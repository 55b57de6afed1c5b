"""The notebooks run end to end (fast mode: TFMETRIC_FAST=1, fewer epochs)."""

import os
import pathlib

import pytest

from conftest import only_tensorflow

# The test extra's notebook runner (absent from CI's oldest-versions run,
# which selects backend-neutral tests only).
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

pytestmark = only_tensorflow

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [path.name[:2] for path in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "outputs committed"
    monkeypatch.setenv("TFMETRIC_FAST", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # The kernel imports this checkout's tfmetric, whatever the working directory.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(path.parent.parent), os.environ.get("PYTHONPATH")]))
    )
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors
