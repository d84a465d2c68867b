"""The lesson notebooks: committed without outputs, built from notebooks/_source, and each one
executes top to bottom on the embedded model (the same engine nbmake uses: nbclient + ipykernel).

Execution sets ``QLEARN_FAST=1`` (the parameters cell then scores fewer tokens and generates
fewer): same cells, smaller numbers. The executed copies and their run times (``NN_*.seconds.json``)
go to ``tests/_artifacts/notebooks/`` (git-ignored) for a look afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = ROOT / "tests" / "_artifacts" / "notebooks"
CELL_TIMEOUT_S = 900


def _ids(paths):
    return [p.stem for p in paths]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lessons_are_numbered_in_order():
    """01 .. NN with no gap and no duplicate number (at least the eight lessons of 0.1)."""
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) >= 8 and numbers == [f"{i:02d}" for i in range(1, len(numbers) + 1)], \
        [p.name for p in NOTEBOOKS]


def test_notebooks_match_their_sources():
    """notebooks/*.ipynb are generated: `python scripts/build_notebooks.py` after editing a source."""
    assert _load_builder().main(["--check"]) == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them (nbstripout, or rebuild)"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_lesson_structure(path):
    """Badge + goals first, then the install cell, then a tagged parameters cell, a "Try this" and a summary."""
    nb = nbformat.read(path, as_version=4)
    first, install, params = nb.cells[:3]
    assert "colab.research.google.com" in first.source and "**Goals.**" in first.source
    assert install.cell_type == "code" and 'find_spec("qlearn") is None' in install.source
    pip_lines = [ln for ln in install.source.splitlines() if "check_call" in ln]
    assert pip_lines and not any("ipywidgets" in ln or "--upgrade" in ln or " -U" in ln for ln in pip_lines), \
        "the install cell must never upgrade ipywidgets (it breaks Colab's widgets)"
    assert "parameters" in params.metadata.get("tags", []) and 'MODEL_ID = "embedded"' in params.source
    text = "\n".join(c.source for c in nb.cells)
    assert "## Try this" in text and "## Summary (measured in this run)" in text


def _explorer_errors(nb) -> list[str]:
    """Error messages an explorer showed in its message area (they are caught, not raised)."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [m["state"]["value"] for m in state.values()
            if m.get("model_name") == "HTMLModel" and "qlearn-error" in str(m.get("state", {}).get("value", ""))]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path, embedded_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("QLEARN_FAST", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - t0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / path.name)
        (ARTIFACTS / f"{path.stem}.seconds.json").write_text(json.dumps({path.name: round(seconds, 1)}))
    assert not _explorer_errors(nb), f"{path.name}: an explorer showed an error: {_explorer_errors(nb)}"
    shown = {i: sum("qlearn-result" in str(o.get("data", {}).get("text/html", "")) for o in c.outputs)
             for i, c in enumerate(nb.cells) if c.cell_type == "code" and "check_prediction(" in c.source}
    assert all(n == 1 for n in shown.values()), f"{path.name}: check_prediction results shown per cell: {shown}"
