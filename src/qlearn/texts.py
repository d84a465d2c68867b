"""The fixed texts qlearn measures on: one evaluation text and two calibration texts, shipped in the package.

They were read once from CPython 3.11.7 and frozen, because what Python carries changes between versions:
the help topics (``pydoc_data.topics``, sorted keys joined by blank lines) are 465,126 characters in 3.11.7,
492,311 in 3.12.1 and 510,742 in 3.13.0, and the tokens a perplexity is scored on differ from the 12th on.
Frozen, the same weights give the same perplexity on every Python. Each text's sha256 is pinned here and
checked when it is read.

- ``evaluation_text()``: the help topics of CPython 3.11.7 (the language reference's prose), 465,126 chars.
- ``read_text("sensitivity")``: ``heapq.__about__`` and the module docstrings of 12 stdlib modules
  (the text qlearn.sensitivity and lesson 10 calibrate on), 21,855 chars.
- ``read_text("methods")``: the docstrings of 21 stdlib modules and their public classes and
  functions (GPTQ / AWQ calibration, qlearn.methods and lesson 11), 107,262 chars.
The two calibration texts are read through `qlearn.calibration` (text and token ids, one function each).

The calibration texts are library reference prose, the evaluation text is the language reference: the
tests check that they share no long run of words. All three are Python's documentation, copyright the
Python Software Foundation, under the PSF License Agreement (docs/texts.md).
"""

from __future__ import annotations

import gzip
import hashlib
from functools import cache
from importlib import resources

__all__ = ["TEXTS", "evaluation_text", "read_text"]

# name -> (file in qlearn/data, sha256 of the UTF-8 text, characters)
TEXTS = {
    "evaluation": ("evaluation.txt.gz", "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee", 465_126),
    "sensitivity": ("calibration_sensitivity.txt.gz",
                    "15196a51d1d675942d68c15b3e9301e32252824e5508f7f056d61f602c001644", 21_855),
    "methods": ("calibration_methods.txt.gz",
                "20bc65043a64b51c1ff14e13e9e8b227199e3a23af3e9ed6196861429c56ea15", 107_262),
}


@cache
def read_text(name: str) -> str:
    """One of `TEXTS`, read from the package and checked against its pinned sha256.

    >>> len(read_text("evaluation"))
    465126
    """
    if name not in TEXTS:
        raise ValueError(f"name must be one of {', '.join(map(repr, TEXTS))}; got {name!r}")
    file, sha256, _ = TEXTS[name]
    data = gzip.decompress(resources.files("qlearn").joinpath("data", file).read_bytes())
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"qlearn/data/{file} does not match its pinned sha256 {sha256[:16]}...: reinstall qlearn")
    return data.decode("utf-8")


def evaluation_text() -> str:
    """The evaluation prose: CPython 3.11.7's help topics, keys sorted, joined by blank lines (465,126 chars).

    >>> evaluation_text()[:22]
    'The "assert" statement'
    """
    return read_text("evaluation")
