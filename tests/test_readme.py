"""README.md's API block stays true: its first paragraph (the math on a random weight) runs as written, every
``ql.<name>`` it mentions exists, and the modes it lists are ``ql.MODES``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import qlearn as ql

README = Path(__file__).resolve().parent.parent / "README.md"


def _api_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def test_the_math_paragraph_runs_as_written():
    """The import and the paragraph after it: quantize a random bf16 weight every way the README shows."""
    first = "\n".join(_api_block().split("\n\n")[:2])
    namespace = {}
    exec(compile(first, "README.md", "exec"), namespace)
    q = namespace["q"]
    assert round(q.bits_per_param, 3) == 4.127            # the figure the README's comment gives
    assert q.codes.shape == namespace["w"].shape


@pytest.mark.parametrize("dotted", sorted(set(re.findall(r"\bql\.([A-Za-z_][\w.]*\w)", _api_block()))))
def test_every_name_the_readme_mentions_exists(dotted):
    obj = ql
    for part in dotted.split("."):
        assert hasattr(obj, part), f"README.md mentions ql.{dotted}, but {part!r} is not there"
        obj = getattr(obj, part)


def test_the_modes_the_readme_lists_are_ql_modes():
    line = next(li for li in _api_block().splitlines() if li.startswith("ql.MODES"))
    listed = line.split("#", 1)[1].split(":")[0].split()
    assert tuple(listed) == ql.MODES
