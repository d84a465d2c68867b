"""Render executed notebooks to HTML and full-page PNG, to read them as a learner would.

The explorers are widgets; a static export has no kernel to draw them, so each widget output is
followed by the PNG(s) its `ipywidgets.Image` held when the notebook ran (from the saved widget
state), plus its message text. Input: executed notebooks (by default tests/_artifacts/notebooks/,
written by tests/test_notebooks.py). Output: <out>/<name>.html and <name>.png.

    python scripts/render_notebooks.py [executed.ipynb ...] [--out tests/_artifacts/rendered]

The PNG step needs Playwright and a Chromium (default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _widget_images(state: dict, model_id: str, seen=None) -> list[str]:
    """Base64 PNGs of the Image widgets under `model_id`, depth first."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    found = []
    if model.get("model_name") == "ImageModel":
        value = model.get("state", {}).get("value")
        if isinstance(value, dict) and "data" in value:   # ipywidgets 8 stores {"data": ...} in buffers
            value = value["data"]
        if isinstance(value, str) and value:
            found.append(value)
    for child in model.get("state", {}).get("children", []) or []:
        found += _widget_images(state, str(child).removeprefix("IPY_MODEL_"), seen)
    return found


def _buffers_into_state(state: dict) -> None:
    """Saved widget state keeps binary values (the PNG) in "buffers"; put them back as base64."""
    for model in state.values():
        for buf in model.get("buffers", []) or []:
            target = model["state"]
            for key in buf["path"][:-1]:
                target = target[key]
            target[buf["path"][-1]] = buf["data"]


def staticize(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Add each widget's PNGs as image outputs right after the widget."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    _buffers_into_state(state)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            outputs.append(out)
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                for png in _widget_images(state, view["model_id"]):
                    outputs.append(nbformat.v4.new_output("display_data", data={"image/png": png}))
        cell.outputs = outputs
    return nb


def to_html(path: Path, out_dir: Path) -> Path:
    nb = staticize(nbformat.read(path, as_version=4))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    target = out_dir / path.with_suffix(".html").name
    target.write_text(body)
    return target


def screenshot(html_files: list[Path], chromium: str = "/usr/bin/chromium") -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        for html in html_files:
            page.goto(html.resolve().as_uri(), wait_until="load", timeout=60_000)
            shot = html.with_suffix(".png")
            page.screenshot(path=str(shot), full_page=True)
            shots.append(shot)
        browser.close()
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "_artifacts" / "rendered")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "tests" / "_artifacts" / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("no executed notebooks: run pytest tests/test_notebooks.py first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    html = [to_html(p, args.out) for p in paths]
    for h in html if args.no_png else screenshot(html):
        print(h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
