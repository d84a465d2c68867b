"""Checking a learner's answers: the assessment lesson's questions (`Question`, `Quiz`) and every lesson's
predict -> run -> check step (`check_prediction`, the one in the package), read with `qlearn.answers` (one
number parser, one yes/no word list, one tolerance rule).

A `Question` holds what the learner is asked, the expected answer (usually measured in the same
run), how an answer is compared with it, and the explanation shown when the answer is wrong.
`Question.check(answer)` never raises for a learner's answer: it returns a `Result` whose
``status`` is "right", "wrong", "unanswered" (``None``) or "invalid" (a value of the wrong kind,
with a message saying what is expected). `Quiz` keeps one result per question and builds the score.

Kinds of answer and how they are read:
- "number": int, float, a one-element tensor/array, or a string `parse_number` reads ("0.5", "1/2",
  "50%", "half", "3.5 GB", "2x"); right when ``|answer - expected| <= max(abs_tol, rel_tol * |expected|)``
  (either tolerance suffices; both 0: exact up to float rounding). The one tolerance rule of the package.
- "numbers": a list, tuple, tensor or array of numbers of the expected length, each as above.
- "choice": one of ``choices``, case and surrounding spaces/brackets ignored ("b", " (B) ").
- "bool": True/False, or one of `TRUE_WORDS` / `FALSE_WORDS` ("yes", "no", "fits", ...) in any case.
- "text": any string, equal to the expected one ignoring case and surrounding spaces/brackets.
- "ordering": names in order, as a list, a tuple or "a < b < c" (also split on commas and spaces).
Worked number: expected 0.5 with abs_tol 0.01 accepts 0.509 and "1/2", rejects 0.52.

>>> q = Question("Q1", "int8 bytes / fp16 bytes?", 0.5, kind="number", abs_tol=0.01)
>>> [q.check(a).status for a in (0.509, "1/2", 0.52, None, {"x": 1})]
['right', 'right', 'wrong', 'unanswered', 'invalid']
"""

from __future__ import annotations

import html
import numbers
from dataclasses import dataclass, field

from .answers import FALSE_WORDS, TRUE_WORDS, as_list, is_close, norm, ordering, parse_number, tolerance_words

__all__ = ["KINDS", "Question", "Result", "Quiz", "check_prediction"]

KINDS = ("number", "numbers", "choice", "bool", "text", "ordering")


_MARKS = {"right": "[right]", "wrong": "[wrong]", "unanswered": "[ -- ]", "invalid": "[??]"}


@dataclass(frozen=True)
class Result:
    """One checked answer: status "right" / "wrong" / "unanswered" / "invalid" and a message.
    Shown once: ``str()`` in a terminal or a ``print``, ``_repr_html_`` as a notebook cell's value."""

    key: str
    status: str
    message: str

    @property
    def right(self) -> bool:
        return self.status == "right"

    def __str__(self) -> str:
        return f"{_MARKS[self.status]} {self.key}: {self.message}"

    def _repr_html_(self) -> str:
        return (f'<div class="qlearn-result qlearn-{self.status}"><b>{html.escape(_MARKS[self.status])}</b> '
                f"{html.escape(self.key)}: {html.escape(self.message)}</div>")


@dataclass(frozen=True)
class Question:
    """A question, its expected answer and how an answer is compared with it.

    kind: one of KINDS. abs_tol / rel_tol: tolerances for numbers (`is_close`: right when
    ``|a - e| <= max(abs_tol, rel_tol * |e|)``); unit: shown after a number. choices: the allowed strings of a
    "choice". explanation: shown when the answer is wrong (it may quote the expected value: the learner has
    answered by then). topic: where it was taught or measured, e.g. "lesson 06 (measured)".
    """

    key: str
    prompt: str
    expected: object
    kind: str = "number"
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    choices: tuple = ()
    explanation: str = ""
    topic: str = ""
    unit: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not (self.abs_tol >= 0 and self.rel_tol >= 0):
            raise ValueError(f"abs_tol and rel_tol must be >= 0, got abs_tol={self.abs_tol!r}, "
                             f"rel_tol={self.rel_tol!r}")
        if self.kind == "choice" and norm(str(self.expected)) not in {norm(c) for c in self.choices}:
            raise ValueError(f"expected {self.expected!r} is not one of choices {self.choices!r}")
        if self.kind in ("numbers", "ordering") and not isinstance(self.expected, (list, tuple)):
            raise ValueError(f"kind {self.kind!r} needs a list or tuple as expected, got {self.expected!r}")

    @property
    def tolerance(self) -> str:
        """The tolerance in words (`tolerance_words`): 'within ±0.05', 'within 5%', 'within 5% or ±0.05', 'exactly'."""
        return tolerance_words(self.abs_tol, self.rel_tol, self.unit)

    def _is_right(self, answer) -> bool:
        """True/False; TypeError/ValueError when the answer is not of this question's kind."""
        if self.kind == "number":
            return is_close(parse_number(answer), float(self.expected), self.abs_tol, self.rel_tol)
        if self.kind == "numbers":
            got = [parse_number(a, f"item {i}") for i, a in enumerate(as_list(answer, len(self.expected)))]
            return all(is_close(a, float(e), self.abs_tol, self.rel_tol)
                       for a, e in zip(got, self.expected, strict=True))
        if self.kind == "bool":
            if isinstance(answer, str) and norm(answer) in TRUE_WORDS | FALSE_WORDS:
                answer = norm(answer) in TRUE_WORDS
            if not isinstance(answer, bool):
                raise TypeError(f"the answer must be True or False (or yes / no), got {type(answer).__name__} "
                                f"{answer!r}")
            return answer == bool(self.expected)
        if self.kind == "ordering":
            return ordering(answer) == ordering(self.expected)
        if self.kind == "text":
            return norm(str(answer)) == norm(str(self.expected))
        allowed = {norm(c) for c in self.choices}            # "choice"
        if not isinstance(answer, str) or norm(answer) not in allowed:
            raise ValueError(f"the answer must be one of {', '.join(map(repr, self.choices))} (any case), "
                             f"got {answer!r}")
        return norm(answer) == norm(str(self.expected))

    def check(self, answer) -> Result:
        """Compare a learner's answer with the expected one; never raises for the answer's value."""
        if answer is None or answer is ...:
            return Result(self.key, "unanswered", "not answered yet (set the variable, rerun the cell)")
        try:
            ok = self._is_right(answer)
        except (TypeError, ValueError) as err:
            return Result(self.key, "invalid", f"{err}. Fix it and rerun the cell.")
        if ok:
            return Result(self.key, "right", "right.")
        tol = f" ({self.tolerance})" if self.kind in ("number", "numbers") else ""
        return Result(self.key, "wrong", f"not quite{tol}. {self.explanation}".strip())


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
                "choice": "one of " + ", ".join(map(repr, q.choices)), "bool": "True or False",
                "text": "a word", "ordering": "names in order, as 'a < b < c'"}[q.kind]
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


def _kind_of(measured, choices: tuple) -> str:
    """How `check_prediction` reads a prediction of `measured`: the Question kind its type implies."""
    if isinstance(measured, bool):
        return "bool"
    if isinstance(measured, numbers.Real):
        return "number"
    if isinstance(measured, str):
        return "choice" if choices else "text"
    if isinstance(measured, (list, tuple)):
        numeric = all(isinstance(m, numbers.Real) and not isinstance(m, bool) for m in measured)
        return "numbers" if numeric and measured else "ordering"
    raise TypeError(f"measured must be a bool, a number, a string or a list of names or numbers; "
                    f"got {type(measured).__name__}")


def _shown(measured, kind: str, unit: str, sep: str) -> str:
    if kind == "bool":
        return "yes" if measured else "no"
    if kind == "number":
        return f"{measured}{unit}" if isinstance(measured, numbers.Integral) else f"{measured:.4g}{unit}"
    if kind == "ordering":
        return sep.join(map(str, measured))
    return f"{measured}{unit}"


def check_prediction(prediction, measured, *, abs_tol: float = 0.0, rel_tol: float = 0.0, choices: tuple = (),
                     explain: str = "", unit: str = "", sep: str = " < ") -> Result:
    """A lesson's predict -> run -> check step: compare the learner's `prediction` with this run's
    `measured` value and return a `Result` (shown once as the cell's value) with the measurement and why.

    How the prediction is read follows `measured`: a bool -> yes / no; a number -> `parse_number`, right
    when ``|p - m| <= max(abs_tol, rel_tol * |m|)`` (`is_close`; both 0: exact); a string -> one of
    `choices` when given, else the same text ignoring case; a list of numbers -> each as a number; a list
    of names -> an ordering ("a < b < c" or a list; shown joined by `sep`). Numpy values count as Python's.
    None or ``...`` means "not yet": the message asks for a prediction and reveals nothing, nor does an
    unreadable one. Worked number: prediction 0.5, measured 0.605, rel_tol 0.05 -> wrong (off by 17%).

    >>> print(check_prediction(0.6, 0.605, rel_tol=0.05, explain="embeddings stay 16-bit"))
    [right] prediction: this run measured 0.605 (within 5%). embeddings stay 16-bit
    """
    if hasattr(measured, "tolist") and not isinstance(measured, str):   # numpy scalars and arrays, tensors
        measured = measured.tolist()
    kind = _kind_of(measured, tuple(choices))
    q = Question("prediction", "", measured, kind=kind, abs_tol=abs_tol, rel_tol=rel_tol, choices=tuple(choices),
                 unit=unit)
    result = q.check(prediction)
    if result.status == "unanswered":
        return Result("prediction", "unanswered", "none yet: set the variable in the cell above, run it, then run "
                      "this cell again (the measurement and the explanation come after your prediction).")
    if result.status == "invalid":
        return Result("prediction", "invalid", result.message)
    tol = f" ({q.tolerance})" if kind in ("number", "numbers") else ""
    said = "" if result.right else f"you predicted {prediction!r}; "
    return Result("prediction", result.status,
                  f"{said}this run measured {_shown(measured, kind, unit, sep)}{tol}. {explain}".strip())
