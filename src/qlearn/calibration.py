"""Calibration text and token ids: what the analyses that need example inputs run the model on.

Two kinds, two uses, one function each:

- ``"sensitivity"``: ``heapq.__about__`` and the module docstrings of 12 stdlib modules (21,855 characters,
  5,485 SmolLM2 tokens): per-layer sensitivity (`qlearn.sensitivity`, lesson 10), 2 x 128 tokens by default.
- ``"methods"``: the docstrings of 21 stdlib modules and their public classes and functions (107,262
  characters, 28,343 SmolLM2 tokens): GPTQ / AWQ statistics (`qlearn.methods.apply`, lesson 11), 4 x 512
  tokens by default.

Both are library reference prose, a different source from the evaluation text (the language reference's
help topics, `qlearn.evaluate`); the texts themselves are frozen in the package (`qlearn.texts`, read from
CPython 3.11.7) so the ids are the same on every Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import texts
from ._checks import check_choice, check_int

__all__ = ["KINDS", "CALIBRATION_MODULES", "DEFAULTS", "Calibration", "calibration_text", "calibration_ids"]

KINDS = ("sensitivity", "methods")

# the stdlib modules each text was read from (CPython 3.11.7); heapq also gives its __about__ essay
CALIBRATION_MODULES = {
    "sensitivity": ("heapq", "difflib", "argparse", "random", "collections", "string", "csv", "json", "unittest",
                    "pickle", "sqlite3", "typing"),
    "methods": ("argparse", "collections", "json", "logging", "subprocess", "textwrap", "difflib", "unittest.case",
                "http.client", "email.message", "pathlib", "csv", "shutil", "tarfile", "zipfile", "heapq",
                "functools", "itertools", "statistics", "fractions", "decimal"),
}

# kind -> (n_tokens, window) when not given: sensitivity 2 sequences of 128, methods 4 of 512
DEFAULTS = {"sensitivity": (256, 128), "methods": (2048, 512)}


def calibration_text(kind: str) -> str:
    """The calibration prose of one kind ("sensitivity": 21,855 chars, "methods": 107,262 chars).

    >>> len(calibration_text("sensitivity")), len(calibration_text("methods"))
    (21855, 107262)
    """
    check_choice(kind, "kind", KINDS)
    return texts.read_text(kind)


def calibration_ids(tok, kind: str, n_tokens: int | None = None, window: int | None = None) -> torch.Tensor:
    """The first ``n_tokens`` token ids of ``calibration_text(kind)``, int64 (n_tokens // window, window).

    tok: a Hugging Face tokenizer (no special tokens are added). n_tokens / window: default `DEFAULTS[kind]`;
    n_tokens must be a multiple of window. Only the first ``8 * n_tokens + 4096`` characters are tokenized
    (English prose is about 4 characters a token, so the ids are those of the whole text; the test checks it).
    Worked number: "sensitivity" with the embedded SmolLM2 tokenizer -> (2, 128), starting 3681, 512, 10168
    ("Heap queues"); with a stand-in tokenizer of one id per character, 8 ids in windows of 4:

    >>> def chars(text, add_special_tokens, return_tensors):
    ...     return {"input_ids": torch.tensor([[ord(c) for c in text]])}
    >>> calibration_ids(chars, "sensitivity", n_tokens=8, window=4).tolist()
    [[72, 101, 97, 112], [32, 113, 117, 101]]
    """
    check_choice(kind, "kind", KINDS)
    n_default, w_default = DEFAULTS[kind]
    n_tokens = n_default if n_tokens is None else check_int(n_tokens, "n_tokens", minimum=1)
    window = w_default if window is None else check_int(window, "window", minimum=1)
    if n_tokens % window:
        raise ValueError(f"n_tokens must be a positive multiple of window={window}; got {n_tokens!r}")
    text = calibration_text(kind)
    ids = tok(text[: 8 * n_tokens + 4096], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if ids.numel() < n_tokens:
        raise ValueError(f"the {kind!r} calibration text gives {ids.numel()} tokens, fewer than n_tokens={n_tokens}")
    return ids[:n_tokens].view(-1, window)


@dataclass(frozen=True)
class Calibration:
    """How much calibration text: ``n_seqs`` sequences of ``seq_len`` tokens; KL at every ``every``-th position.
    Default 2 x 128 tokens, KL on 128 positions: one layer costs about 1/8 of a 4,096-token perplexity."""

    n_seqs: int = 2
    seq_len: int = 128
    every: int = 2

    def __post_init__(self):
        for name in ("n_seqs", "seq_len", "every"):
            check_int(getattr(self, name), f"Calibration.{name}", minimum=1)

    def ids(self, tok) -> torch.Tensor:
        """The first n_seqs x seq_len ids of the "sensitivity" calibration text, int64 (n_seqs, seq_len)."""
        return calibration_ids(tok, "sensitivity", n_tokens=self.n_seqs * self.seq_len, window=self.seq_len)
