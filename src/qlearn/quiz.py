"""Quiz machinery for the assessment lesson: questions with tolerant answer checking and a score.

A `Question` holds what the learner is asked, the expected answer (usually measured in the same
run), how an answer is compared with it, and the explanation shown when the answer is wrong.
`Question.check(answer)` never raises for a learner's answer: it returns a `Result` whose
``status`` is "right", "wrong", "unanswered" (``None``) or "invalid" (a value of the wrong kind,
with a message saying what is expected). `Quiz` keeps one result per question and builds the score.

Kinds of answer and how they are read:
- "number": int, float, a one-element tensor/array, or a string such as "0.5", "1/2" or "50%";
  right when ``|answer - expected| <= tol + rel_tol * |expected|``.
- "numbers": a list, tuple, tensor or array of numbers of the expected length, each as above.
- "choice": one of ``choices``, case and surrounding spaces/brackets ignored ("b", " (B) ").
- "bool": True/False, or "true"/"false"/"yes"/"no" in any case.
Worked number: expected 0.5 with tol 0.01 accepts 0.509 and "1/2", rejects 0.52.

>>> q = Question("Q1", "int8 bytes / fp16 bytes?", 0.5, kind="number", tol=0.01)
>>> [q.check(a).status for a in (0.509, "1/2", 0.52, None, {"x": 1})]
['right', 'right', 'wrong', 'unanswered', 'invalid']
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["KINDS", "Question", "Result", "Quiz", "check_prediction"]

KINDS = ("number", "numbers", "choice", "bool")
_TRUE, _FALSE = {"true", "yes", "y", "t"}, {"false", "no", "n", "f"}


class _Invalid(Exception):
    """An answer of the wrong kind; the message says what is expected."""


def _as_number(value, what: str) -> float:
    """A learner's number as a float: ints, floats, 1-element tensors/arrays, "0.5", "1/2", "50%"."""
    if isinstance(value, bool):
        raise _Invalid(f"{what} must be a number, got the bool {value!r}")
    if hasattr(value, "item") and hasattr(value, "shape"):   # a tensor, array or numpy scalar
        try:
            value = value.item()
        except (ValueError, RuntimeError, AttributeError):
            raise _Invalid(f"{what} must be one number, got an array of shape {tuple(value.shape)}") from None
    if isinstance(value, str):
        text = value.strip().replace(",", "").replace("_", "")
        try:
            number = float(Fraction(text[:-1])) / 100 if text.endswith("%") else float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise _Invalid(f"{what} must be a number such as 0.5, '1/2' or '50%', got the string {value!r}") from None
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise _Invalid(f"{what} must be a number (int or float), got {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise _Invalid(f"{what} must be a finite number, got {value!r}")
    return number


def _as_list(value, n: int) -> list:
    """A learner's sequence as a list of n items: list, tuple, tensor, array (not a str or a dict)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"the answer must be a list or tuple of {n} numbers, got {type(value).__name__} {value!r}")
    flat = list(value)
    if len(flat) != n:
        raise _Invalid(f"the answer must have {n} numbers, got {len(flat)}: {value!r}")
    return flat


def _norm(text: str) -> str:
    return text.strip().strip("()[].").strip().lower()


@dataclass(frozen=True)
class Result:
    """One checked answer: status "right" / "wrong" / "unanswered" / "invalid" and a message."""

    key: str
    status: str
    message: str

    @property
    def right(self) -> bool:
        return self.status == "right"

    def __str__(self) -> str:
        mark = {"right": "[right]", "wrong": "[wrong]", "unanswered": "[ -- ]", "invalid": "[??]"}[self.status]
        return f"{mark} {self.key}: {self.message}"


@dataclass(frozen=True)
class Question:
    """A question, its expected answer and how an answer is compared with it.

    kind: one of KINDS. tol / rel_tol: absolute and relative tolerance for numbers (the answer is
    right when ``|a - e| <= tol + rel_tol * |e|``). choices: the allowed strings of a "choice".
    explanation: shown when the answer is wrong (it may quote the expected value: the learner has
    answered by then). topic: where it was taught or measured, e.g. "lesson 06 (measured)".
    """

    key: str
    prompt: str
    expected: object
    kind: str = "number"
    tol: float = 0.0
    rel_tol: float = 0.0
    choices: tuple = ()
    explanation: str = ""
    topic: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.tol < 0 or self.rel_tol < 0:
            raise ValueError(f"tol and rel_tol must be >= 0, got tol={self.tol!r}, rel_tol={self.rel_tol!r}")
        if self.kind == "choice" and _norm(str(self.expected)) not in {_norm(c) for c in self.choices}:
            raise ValueError(f"expected {self.expected!r} is not one of choices {self.choices!r}")
        if self.kind == "numbers" and not isinstance(self.expected, (list, tuple)):
            raise ValueError(f"kind 'numbers' needs a list or tuple as expected, got {self.expected!r}")

    @property
    def tolerance(self) -> str:
        """The tolerance in words, for the prompt: 'within 0.05', 'within 5%', 'within 0.05 + 5% of the value',
        'exact' (the two add up: see ``_close``)."""
        rel = f"{100 * self.rel_tol:.3g}%"
        if self.tol and self.rel_tol:
            return f"within {self.tol:g} + {rel} of the value"
        return f"within {self.tol:g}" if self.tol else f"within {rel}" if self.rel_tol else "exact"

    def _close(self, answer: float, expected: float) -> bool:
        return abs(answer - expected) <= self.tol + self.rel_tol * abs(expected) + 1e-12

    def _is_right(self, answer) -> bool:
        """True/False, or _Invalid when the answer is not of this question's kind."""
        if self.kind == "number":
            return self._close(_as_number(answer, "the answer"), float(self.expected))
        if self.kind == "numbers":
            items = _as_list(answer, len(self.expected))
            got = [_as_number(a, f"item {i}") for i, a in enumerate(items)]
            return all(self._close(a, float(e)) for a, e in zip(got, self.expected, strict=True))
        if self.kind == "bool":
            if isinstance(answer, str) and _norm(answer) in _TRUE | _FALSE:
                answer = _norm(answer) in _TRUE
            if not isinstance(answer, bool):
                raise _Invalid(f"the answer must be True or False, got {type(answer).__name__} {answer!r}")
            return answer == bool(self.expected)
        allowed = {_norm(c) for c in self.choices}            # "choice"
        if not isinstance(answer, str) or _norm(answer) not in allowed:
            raise _Invalid(f"the answer must be one of {', '.join(map(repr, self.choices))} (any case), "
                           f"got {answer!r}")
        return _norm(answer) == _norm(str(self.expected))

    def check(self, answer) -> Result:
        """Compare a learner's answer with the expected one; never raises for the answer's value."""
        if answer is None or answer is ...:
            return Result(self.key, "unanswered", "not answered yet (set the variable, rerun the cell)")
        try:
            ok = self._is_right(answer)
        except _Invalid as err:
            return Result(self.key, "invalid", f"{err}. Fix it and rerun the cell.")
        if ok:
            return Result(self.key, "right", "right.")
        return Result(self.key, "wrong", f"not quite ({self.tolerance}). {self.explanation}".strip())


@dataclass
class Quiz:
    """Questions by key and the latest result of each; `check` records and returns one result.

    >>> quiz = Quiz([Question("Q1", "2 + 2?", 4)])
    >>> print(quiz.check("Q1", "4"))
    [right] Q1: right.
    >>> quiz.score()
    (1, 1, 1)
    """

    questions: list
    results: dict = field(default_factory=dict)

    def __post_init__(self):
        keys = [q.key for q in self.questions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"question keys must be unique, got {keys}")
        self._by_key = {q.key: q for q in self.questions}

    def __getitem__(self, key: str) -> Question:
        if key not in self._by_key:
            raise KeyError(f"no question {key!r}; questions are {list(self._by_key)}")
        return self._by_key[key]

    def add(self, question: Question) -> Question:
        """Add (or replace) a question; returns it."""
        if question.key not in self._by_key:
            self.questions.append(question)
        else:
            self.questions[[q.key for q in self.questions].index(question.key)] = question
        self._by_key[question.key] = question
        return question

    def ask(self, key: str) -> str:
        """The question as the learner sees it: prompt, the kind of answer and the tolerance (never the answer)."""
        q = self[key]
        n = len(q.expected) if q.kind == "numbers" else 0
        form = {"number": f"a number, {q.tolerance}", "numbers": f"a list of {n} numbers, {q.tolerance}",
                "choice": "one of " + ", ".join(map(repr, q.choices)), "bool": "True or False"}[q.kind]
        return f"{q.key}. {q.prompt}\n   Answer: {form}." + (f"  (Topic: {q.topic}.)" if q.topic else "")

    def right_answer(self, key: str):
        """The expected answer of question `key` (for tests and for a teacher; the lesson never prints it
        before the learner answers)."""
        return self[key].expected

    def check(self, key: str, answer) -> Result:
        """Check `answer` against question `key` and keep the result (a rerun replaces it)."""
        result = self[key].check(answer)
        self.results[key] = result
        return result

    def score(self) -> tuple:
        """(right, answered, total): answered excludes unanswered and invalid answers."""
        done = [r for r in self.results.values() if r.status in ("right", "wrong")]
        return sum(r.right for r in done), len(done), len(self.questions)

    def summary(self) -> str:
        """Markdown: the score, then for each wrong or invalid answer its message and explanation."""
        right, answered, total = self.score()
        lines = [f"**Score: {right} / {total}** ({answered} answered, {total - answered} not answered or not valid)."]
        for q in self.questions:
            r = self.results.get(q.key)
            if r is not None and r.status in ("wrong", "invalid"):
                lines.append(f"- **{q.key}** ({q.topic or 'question'}): {r.message}")
        return "\n".join(lines)


def check_prediction(prediction, measured, kind: str = "number", tol: float = 0.0, rel_tol: float = 0.0,
                     choices: tuple = (), explain: str = "", unit: str = "") -> Result:
    """A lesson's predict -> run -> check step: compare the learner's `prediction` with this run's
    `measured` value, print the verdict, the measurement and why (`explain`), and return the Result.

    Nothing is revealed before the learner predicts: this is called in a cell after the run.
    Worked number: prediction 0.5, measured 0.605, rel_tol 0.05 -> wrong (off by 17%).

    >>> print(check_prediction(0.6, 0.605, rel_tol=0.05, explain="embeddings stay 16-bit"))  # doctest: +ELLIPSIS
    [right] prediction: ...
    """
    q = Question("prediction", "", measured, kind=kind, tol=tol, rel_tol=rel_tol, choices=choices)
    result = q.check(prediction)
    shown = f"{measured:.4g}{unit}" if isinstance(measured, float) else f"{measured}{unit}"
    verdict = {"right": f"close: this run measured {shown} ({q.tolerance}).",
               "wrong": f"this run measured {shown}; your prediction was {prediction!r} ({q.tolerance} counts).",
               "unanswered": "no prediction written yet: set the variable in the cell above, run it, then run this "
                             "cell again (the measurement and the explanation come after your prediction).",
               "invalid": result.message + f" This run measured {shown}."}[result.status]
    told = "" if result.status == "unanswered" else explain   # reveal nothing before a prediction
    result = Result("prediction", result.status, f"{verdict} {told}".strip())
    print(result)
    return result
