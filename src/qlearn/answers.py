"""Reading what a learner wrote: one number parser, one yes/no word list, one tolerance rule.

`qlearn.quiz` (the assessment lesson's questions and every lesson's ``check_prediction``) reads answers
with these. The tolerance rule of the whole package (`is_close`):
a number is right when ``|answer - expected| <= max(abs_tol, rel_tol * |expected|)``: either tolerance
suffices, as in ``math.isclose``, but relative to the expected value only. Pure Python.
"""

from __future__ import annotations

import math
import numbers
import re

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "parse_number", "is_close", "tolerance_words", "as_list", "ordering",
           "norm"]

TRUE_WORDS = frozenset({"true", "yes", "y", "t", "1", "fits", "it fits"})
FALSE_WORDS = frozenset({"false", "no", "n", "f", "0", "does not fit"})
_NUMBER_WORDS = {"half": 0.5, "a half": 0.5, "one half": 0.5, "quarter": 0.25, "a quarter": 0.25,
                 "one quarter": 0.25, "third": 1 / 3, "a third": 1 / 3, "double": 2.0, "twice": 2.0}


def parse_number(value, name: str = "the answer") -> float:
    """A number from what a learner wrote: 0.5, "0.5", "1/2", "50%", "half", "3.5 GB", "2x", "1,024", a
    one-element tensor or array. TypeError for another type (a bool, a list), ValueError for a string
    without a number or a value that is not finite; the message names `name`.

    >>> [parse_number(t) for t in (0.25, "1/4", "25 %", "a quarter", "7.2 GB")]
    [0.25, 0.25, 0.25, 0.25, 7.2]
    """
    if hasattr(value, "item") and hasattr(value, "shape"):   # a tensor, array or numpy scalar
        if math.prod(value.shape) != 1:
            raise TypeError(f"{name} must be one number, got an array of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    if isinstance(value, str):
        number = _number_in(value, name)
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a number (int or float) or a string such as '0.5', '1/2', '50%'; "
                        f"got {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _number_in(text: str, name: str) -> float:
    t = text.strip().lower().replace(",", "").replace("_", "")
    if t in _NUMBER_WORDS:
        return _NUMBER_WORDS[t]
    frac = re.fullmatch(r"([-+]?\d*\.?\d+)\s*/\s*(\d*\.?\d+)", t)
    if frac and float(frac.group(2)) != 0:
        return float(frac.group(1)) / float(frac.group(2))
    num = None if frac else re.match(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", t)
    if not num:
        raise ValueError(f"{name} must be a number such as 0.5, '1/2', '50%' or '3.5 GB'; got the string {text!r}")
    value = float(num.group(0))
    return value / 100 if t[num.end():].strip().startswith("%") else value


def is_close(answer: float, expected: float, abs_tol: float = 0.0, rel_tol: float = 0.0) -> bool:
    """The package's one tolerance rule: ``|answer - expected| <= max(abs_tol, rel_tol * |expected|)``
    (plus 1e-12 x max(1, |expected|) for float rounding). Worked number: expected 200, rel_tol 0.05 ->
    190 and 210 are right, 189.9 is not.

    >>> is_close(210, 200, rel_tol=0.05), is_close(189.9, 200, rel_tol=0.05), is_close(10.4, 10, 0.5, 0.01)
    (True, False, True)
    """
    bound = max(abs_tol, rel_tol * abs(expected))
    return abs(answer - expected) <= bound + 1e-12 * max(1.0, abs(expected))


def tolerance_words(abs_tol: float = 0.0, rel_tol: float = 0.0, unit: str = "") -> str:
    """`is_close`'s tolerance in words: "within 10%", "within ±0.05 GB", "within 5% or ±0.5" (either
    suffices), "exactly" when both are 0.

    >>> tolerance_words(0.5, 0.0, " dB"), tolerance_words(0.5, 0.01), tolerance_words()
    ('within ±0.5 dB', 'within 1% or ±0.5', 'exactly')
    """
    parts = [f"{100 * rel_tol:.3g}%"] if rel_tol > 0 else []
    parts += [f"±{abs_tol:.4g}{unit}"] if abs_tol > 0 else []
    return f"within {' or '.join(parts)}" if parts else "exactly"


def as_list(value, n: int) -> list:
    """A learner's sequence as a list of n items: list, tuple, tensor, array (not a str or a dict).

    >>> as_list((80, -127), 2)
    [80, -127]
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"the answer must be a list or tuple of {n} numbers, got {type(value).__name__} {value!r}")
    if len(value) != n:
        raise ValueError(f"the answer must have {n} numbers, got {len(value)}: {value!r}")
    return list(value)


def ordering(value) -> list[str]:
    """Names in order, lower case, from a list / tuple or a string "a < b < c" (also split on , ; > and spaces).

    >>> ordering("NF4 < fp4, INT4")
    ['nf4', 'fp4', 'int4']
    """
    if isinstance(value, str):
        value = re.split(r"\s*(?:<|>|,|;|\s)\s*", value.strip())
    elif not isinstance(value, (list, tuple)):
        raise TypeError(f"the answer must be names in order, as a list or as 'a < b < c'; got {value!r}")
    return [str(v).strip().lower() for v in value if str(v).strip()]


def norm(text: str) -> str:
    """A word as compared: lower case, without surrounding spaces, brackets and a full stop.

    >>> norm(" (B). ")
    'b'
    """
    return text.strip().strip("()[].").strip().lower()
