"""A real browser: JupyterLab on 127.0.0.1 with a token, a lesson notebook opened in headless
Chromium through Playwright, all cells run, an explorer's slider dragged with the mouse (pressed, moved,
released), and the figure's image must change while the button is still held, not only after the
release (the sliders send while dragged: continuous_update). Screenshots go to tests/_artifacts/browser/.
The same with ipywidgets 7.7.1 in the classic Notebook front end (nbclassic, widgetsnbextension
3.6), the pair Colab's ipywidgets 7.7 was made for, on a two-cell notebook that shows an explorer
(tests/_artifacts/browser/classic_*.png): the kernel and server take ipywidgets 7.7.1 and nbclassic
from <venv>/ipywidgets7 (see tests/test_ipywidgets7.py).

Needs Debian's chromium (/usr/bin/chromium) and the playwright Python package (no `playwright
install`: the system Chromium is used); skips with the reason when either is missing.
The notebook is copied to a temporary folder first, so JupyterLab's autosave never touches the repo.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_absmax_vs_zeropoint.ipynb"
ARTIFACTS = ROOT / "tests" / "_artifacts" / "browser"
CHROMIUM = os.environ.get("QLEARN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
EXPLORER = ".qlearn-zeropoint-explorer"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout:.0f} s")


@pytest.fixture
def lab(tmp_path, embedded_path):
    """A JupyterLab server on a free port with a random token, serving a copy of the notebook."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, QLEARN_FAST="1", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')   # no news pop-up
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 90, proc)
        yield f"http://127.0.0.1:{port}", token, root
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # the server and the kernels it started
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "lab.log", ARTIFACTS / "jupyterlab.log")


def _drag(page, handle, track, readout_of, figure_ready: str, before_src: str, shot: Path) -> tuple[bool, str]:
    """Drag `handle` with the mouse towards the low end of `track`: press, move half way, and while
    still pressing wait up to 30 s for the figure to change (the sliders send while dragged and the
    kernel redraws as they do); then move on and release. Returns (changed while pressed, the readout
    then)."""
    hb, tb = handle.bounding_box(), track.bounding_box()
    y = hb["y"] + hb["height"] / 2
    start, end = hb["x"] + hb["width"] / 2, tb["x"] + 0.02 * tb["width"]
    page.mouse.move(start, y)
    page.mouse.down()
    try:
        page.mouse.move((start + end) / 2, y, steps=8)
        try:
            page.wait_for_function(figure_ready, arg=before_src, timeout=30_000)
            changed = True
        except Exception:   # playwright's TimeoutError: the figure did not move while pressed
            changed = False
        readout = readout_of.inner_text()
        page.screenshot(path=str(shot))
        page.mouse.move(end, y, steps=6)
    finally:
        page.mouse.up()
    return changed, readout.strip()


def _figure_src(page) -> str:
    return page.locator(f"{EXPLORER} img.qlearn-figure").first.get_attribute("src") or ""


def _wait_kernel_settled(base: str, token: str, timeout: float = 120) -> None:
    """The notebook's session has one kernel, idle and connected, for 3 polls in a row.

    JupyterLab can start a kernel, drop it and start another while a notebook opens; cells run
    against the first one never finish. Ask the server rather than the page.
    """
    import json

    deadline, seen, streak = time.monotonic() + timeout, None, 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as r:
                sessions = json.load(r)
            kid = sessions[0]["kernel"]["id"] if len(sessions) == 1 else None
            if kid:
                with urllib.request.urlopen(f"{base}/api/kernels/{kid}?token={token}", timeout=5) as r:
                    kernel = json.load(r)
                ok = kernel.get("execution_state") == "idle" and kernel.get("connections", 0) > 0
            else:
                ok = False
        except (OSError, ValueError, KeyError, IndexError):
            kid, ok = None, False
        streak = streak + 1 if ok and kid == seen else (1 if ok else 0)
        seen = kid
        if streak >= 3:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the notebook's kernel did not settle (idle, connected) within {timeout:.0f} s")


def _run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells, retried until the first code cell shows it ran ([*] or [1])."""
    started = ("() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))"
               ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))")
    for _ in range(attempts):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        for _ in range(40):
            if page.evaluate(started):
                return
            page.wait_for_timeout(250)
    raise AssertionError("Run All Cells did not start the notebook")


def _wait_until_all_ran(page, timeout_ms: int) -> None:
    """Every code cell shows an execution count and the kernel is idle: nothing else will redraw."""
    page.wait_for_function(
        "() => { const ps = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'));"
        " const idle = document.querySelector(\".jp-Notebook-ExecutionIndicator[data-status='idle']\");"
        " return idle && ps.length > 0 && ps.every(p => /\\[\\d+\\]/.test(p.textContent)); }",
        timeout=timeout_ms, polling=500)


def test_slider_moves_the_figure_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    base, token, _ = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="domcontentloaded")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=120_000)
            # the kernel is connected and idle: only then does "Run All Cells" run anything
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                state="attached", timeout=120_000)
            _wait_kernel_settled(base, token)
            page.screenshot(path=str(ARTIFACTS / "01_opened.png"))
            _run_all_cells(page)

            _wait_until_all_ran(page, 300_000)
            figure = page.locator(f"{EXPLORER} img.qlearn-figure").first
            figure.wait_for(state="attached", timeout=30_000)
            figure.scroll_into_view_if_needed()
            page.wait_for_function(
                f"() => {{ const i = document.querySelector('{EXPLORER} img.qlearn-figure');"
                " return i && i.src && i.complete && i.naturalWidth > 0; }", timeout=120_000)
            before_src = _figure_src(page)
            before_png = figure.screenshot(path=str(ARTIFACTS / "02_figure_before.png"))
            explorer = page.locator(EXPLORER).first
            explorer.screenshot(path=str(ARTIFACTS / "03_explorer_before.png"))

            # The "bits" slider as the browser renders it (noUiSlider in ipywidgets 8): drag its
            # handle with the mouse from 4 towards the low end of 2..8.
            slider = page.locator(f"{EXPLORER} .qlearn-control-bits").first
            handle = slider.locator(".noUi-handle").first
            track = slider.locator(".noUi-target, .slider").first
            handle.wait_for(state="visible")
            figure_changed = (f"(old) => {{ const i = document.querySelector('{EXPLORER} img.qlearn-figure');"
                              " return i && i.src !== old && i.complete && i.naturalWidth > 0; }")
            during, during_readout = _drag(page, handle, track, slider.locator(".widget-readout").first,
                                           figure_changed, before_src,
                                           ARTIFACTS / "04a_page_during_drag.png")
            readout = slider.locator(".widget-readout").first.inner_text().strip()

            page.wait_for_function(
                f"(old) => {{ const i = document.querySelector('{EXPLORER} img.qlearn-figure');"
                " return i && i.src !== old && i.complete && i.naturalWidth > 0; }",
                arg=before_src, timeout=60_000)
            page.wait_for_timeout(300)
            after_png = figure.screenshot(path=str(ARTIFACTS / "04_figure_after.png"))
            explorer.screenshot(path=str(ARTIFACTS / "05_explorer_after.png"))
            page.screenshot(path=str(ARTIFACTS / "06_page_after.png"))
            message = explorer.locator(".qlearn-message").first.inner_text()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "99_failure.png"))
            raise
        finally:
            browser.close()
    assert readout != "4", f"the bits slider did not move (readout {readout!r})"
    assert during, f"the figure did not change while the slider was held (readout {during_readout!r} then)"
    assert during_readout != "4", "the slider had not moved when the figure changed"
    assert after_png != before_png, "the figure's pixels did not change after moving the slider"
    assert "⚠" not in message, f"the explorer showed an error: {message}"


# --- ipywidgets 7.7.1 in the classic Notebook (nbclassic + widgetsnbextension 3.6) -------------------

CLASSIC_CELLS = ("import ipywidgets\nimport qlearn as ql\nprint('ipywidgets', ipywidgets.__version__)",
                 "zp = ql.widgets.zeropoint_explorer(bits=4)\nzp")


@pytest.fixture
def classic(tmp_path):
    """nbclassic on a free port with a random token; its kernels import ipywidgets 7.7.1 and the
    page loads widgetsnbextension 3.6's front end, both from <venv>/ipywidgets7."""
    import nbformat

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    from test_ipywidgets7 import ensure_built

    target = ensure_built()
    root = tmp_path / "classic"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CLASSIC_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "explorer.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])),
               JUPYTER_PATH=str(target / "share" / "jupyter"),           # widgetsnbextension 3.6's JavaScript
               JUPYTER_CONFIG_PATH=str(target / "etc" / "jupyter"),       # ... enabled there
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = (tmp_path / "classic.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbclassic", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--NotebookApp.show_banner=False",
         *(f"--ServerApp.jpserver_extensions={name}=False"            # not needed here: starts ~4 s sooner
           for name in ("jupyterlab", "jupyter_lsp", "jupyter_server_terminals"))],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 90, proc)
        yield f"http://127.0.0.1:{port}", token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "classic.log", ARTIFACTS / "classic_notebook.log")


def test_slider_moves_the_figure_in_classic_notebook_ipywidgets7(classic):
    from importlib.metadata import PackageNotFoundError, version

    from playwright.sync_api import sync_playwright

    base, token = classic
    try:   # nbclassic moves under /nbclassic where Notebook 7 is installed beside it
        prefix = "/nbclassic" if int(version("notebook").split(".")[0]) >= 7 else ""
    except PackageNotFoundError:
        prefix = ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("classic_*.png"):
        old.unlink()
    figure_ready = (f"(old) => {{ const i = document.querySelector('{EXPLORER} img.qlearn-figure');"
                    " return i && i.src && i.src !== old && i.complete && i.naturalWidth > 0; }")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}{prefix}/notebooks/explorer.ipynb?token={token}", wait_until="domcontentloaded")
            page.wait_for_function("() => window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel"
                                   " && Jupyter.notebook.kernel.is_connected()", timeout=120_000)
            page.locator("#kernel_indicator_icon.kernel_idle_icon").wait_for(state="attached", timeout=120_000)
            # widgetsnbextension loads after the page: until it has given the kernel its widget_manager (and, in the
            # same call, registered the widget output type) a widget displayed by a cell renders as nothing
            page.wait_for_function("() => Jupyter.notebook.kernel.widget_manager", timeout=120_000)
            page.evaluate("() => Jupyter.notebook.execute_all_cells()")
            page.wait_for_function(
                "() => Jupyter.notebook.get_cells().every(c => /^\\d+$/.test(String(c.input_prompt_number)))"
                " && document.querySelector('#kernel_indicator_icon.kernel_idle_icon')", timeout=300_000, polling=500)
            printed = page.locator(".output_area .output_text").first.inner_text()
            page.wait_for_function(figure_ready, arg="", timeout=120_000)
            figure = page.locator(f"{EXPLORER} img.qlearn-figure").first
            explorer = page.locator(EXPLORER).first
            before_src = figure.get_attribute("src")
            before_png = figure.screenshot(path=str(ARTIFACTS / "classic_01_figure_before.png"))
            explorer.screenshot(path=str(ARTIFACTS / "classic_02_explorer_before.png"))

            # ipywidgets 7 draws sliders with jQuery UI: drag the handle from 4 towards the low end
            slider = page.locator(f"{EXPLORER} .qlearn-control-bits").first
            handle, track = slider.locator(".ui-slider-handle").first, slider.locator(".ui-slider").first
            during, during_readout = _drag(page, handle, track, slider.locator(".widget-readout").first,
                                           figure_ready, before_src,
                                           ARTIFACTS / "classic_02a_page_during_drag.png")
            readout = slider.locator(".widget-readout").first.inner_text().strip()

            page.wait_for_function(figure_ready, arg=before_src, timeout=60_000)
            page.wait_for_timeout(300)
            after_png = figure.screenshot(path=str(ARTIFACTS / "classic_03_figure_after.png"))
            explorer.screenshot(path=str(ARTIFACTS / "classic_04_explorer_after.png"))
            message = explorer.locator(".qlearn-message").first.inner_text()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "classic_99_failure.png"))
            raise
        finally:
            browser.close()
    assert printed.strip() == "ipywidgets 7.7.1", f"the kernel did not run ipywidgets 7.7.1: {printed!r}"
    assert readout == "2", f"the bits slider did not reach 2 (readout {readout!r})"
    assert during, f"the figure did not change while the slider was held (readout {during_readout!r} then)"
    assert after_png != before_png, "the figure's pixels did not change after moving the slider"
    assert "⚠" not in message, f"the explorer showed an error: {message}"
