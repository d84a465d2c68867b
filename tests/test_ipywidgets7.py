"""The explorers under ipywidgets 7.7.1, what Colab has (with no ipympl).

ipywidgets 7.7.1 and the pure-Python packages it needs in another version than the main venv's
live in `<venv>/ipywidgets7` (PINS, installed with `pip --target --no-deps` in a few seconds), with
nbclassic, the classic Notebook front end ipywidgets 7 supports, for tests/test_browser.py.
`make test` builds that folder by running this file as a script.

The test runs the tests of tests/test_widgets.py marked ipywidgets7 (every explorer built and each
of its controls moved, bad input shown as a message, the display path) in a subprocess with that
folder first on PYTHONPATH, after checking there that `import ipywidgets` gives 7.7.1. Everything
else (torch, IPython, ipykernel, traitlets, matplotlib) is the main venv's, newer than Colab's: this
checks qlearn against ipywidgets 7.7.1's Python API, not Colab's whole stack or its front end.
One of them starts a real kernel (jupyter_client), which inherits PYTHONPATH: its slider updates arrive
as comm messages handled by ipywidgets 7.7.1 there.

Left to the main venv: the tests of math and plots (the same under either ipywidgets) and the
tests marked slow (outlier_explorer and generation_explorer on the embedded SmolLM2); the widget
code those take is the one the fake-model tests run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(sys.prefix) / "ipywidgets7"       # beside the venv's own site-packages
MARKER = TARGET / ".complete"                   # written last, holds PINS: a changed pin rebuilds
# ipywidgets 7.7.1 needs widgetsnbextension~=3.6.0 and ipython_genutils~=0.2.0 (the venv has
# widgetsnbextension 4 and no ipython_genutils); its jupyterlab_widgets>=1.0 and ipykernel,
# ipython, traitlets needs are met by the venv's.
# nbclassic 1.3 (classic Notebook on the venv's jupyter_server 2, 12 MB) needs ipython_genutils too.
PINS = ("ipywidgets==7.7.1", "widgetsnbextension==3.6.10", "ipython_genutils==0.2.0", "nbclassic==1.3.3")
VERSION = "7.7.1"
# Run in the subprocess: check what `import ipywidgets` gives, then pytest in the same process.
RUNNER = (
    "import sys, ipywidgets, pytest\n"
    f"assert ipywidgets.__version__ == {VERSION!r}, "
    "f'expected ipywidgets {VERSION} first on sys.path, got {ipywidgets.__version__} from {ipywidgets.__file__}'\n"
    "print(f'ipywidgets {ipywidgets.__version__} from {ipywidgets.__file__}', flush=True)\n"
    "sys.exit(pytest.main(sys.argv[1:]))\n"
)
# What must be among the tests run here; all must pass, none skip.
MUST_RUN = ("test_every_control_redraws_the_figure", "test_explorer_display_carries_a_png_fallback",
            "test_histogram_explorer_controls_drive_the_figure", "test_generation_explorer_with_a_fake_loader",
            "test_histogram_explorer_bad_input_is_a_message", "test_histogram_explorer_model_layer_names",
            "test_every_explorer_slider_sends_while_it_is_dragged",        # continuous_update on 7.7.1's sliders
            "test_front_end_changes_are_coalesced_in_a_real_kernel")       # a kernel importing ipywidgets 7.7.1
# ipywidgets 7 opens its comms with ipykernel.comm.Comm, which the venv's ipykernel 7 deprecates
COMM_DEPRECATED = "The `ipykernel.comm.Comm` class has been deprecated"
OFFLINE = ("from versions: none", "NewConnectionError", "Failed to establish a new connection",
           "Network is unreachable", "Temporary failure in name resolution", "ProxyError")


def ready() -> bool:
    return MARKER.is_file() and MARKER.read_text().split() == list(PINS)


def build(retries: int = 5) -> subprocess.CompletedProcess:
    """Install PINS into TARGET (into a new folder renamed into place, so a failed install leaves
    nothing half-made); returns pip's CompletedProcess."""
    import shutil

    tmp = TARGET.with_name(TARGET.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", f"--retries={retries}", "--target", str(tmp), *PINS],
        capture_output=True, text=True)
    if pip.returncode == 0:
        (tmp / MARKER.name).write_text("\n".join(PINS) + "\n")
        shutil.rmtree(TARGET, ignore_errors=True)
        tmp.rename(TARGET)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return pip


def ensure_built() -> Path:
    """TARGET, built here when `make test` has not built it; skips only when no index is reachable."""
    if not ready():
        pip = build(retries=0)
        if pip.returncode != 0:
            out = (pip.stdout + pip.stderr).strip()
            if any(s in out for s in OFFLINE):
                pytest.skip(f"cannot install {' '.join(PINS)} into {TARGET}: no package index reachable "
                            f"({out.splitlines()[-1]})")
            raise AssertionError(f"pip could not install {PINS} into {TARGET}:\n{out}")
    return TARGET


def test_explorers_under_ipywidgets_7_7_1(tmp_path):
    ensure_built()
    report = tmp_path / "ipywidgets7.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TARGET), *filter(None, [os.environ.get("PYTHONPATH")])]),
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")   # these tests need no plugin; loading them all costs ~5 s
    args = ["tests/test_widgets.py", "-m", "ipywidgets7 and not slow", "-q", "-p", "no:cacheprovider",
            f"--junitxml={report}", "-W", f"ignore:{COMM_DEPRECATED}:DeprecationWarning"]
    run = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    out = run.stdout + run.stderr
    assert f"ipywidgets {VERSION} from {TARGET}" in out, out[-4000:]
    assert run.returncode == 0, out[-8000:]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    names = [case.get("name") for case in suite.iter("testcase")]
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    missing = [m for m in MUST_RUN if not any(n.split("[")[0] == m for n in names)]
    assert not missing and counts["tests"] >= 14, (missing, counts)
    assert sum(n.startswith("test_every_control_redraws_the_figure[") for n in names) >= 6, names   # each explorer


if __name__ == "__main__":   # `make test` builds the folder this way before pytest runs
    if not ready():
        result = build()
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.returncode:
            sys.exit(result.returncode)
    MARKER.touch()
