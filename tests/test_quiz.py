"""qlearn.quiz and qlearn.answers: tolerant answer checking, the one tolerance rule, check_prediction, the score;
lesson 08 (qlearn.assessment, qlearn.questions): answers hidden until answered, computed from the run, full marks
when right and none when wrong."""

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from qlearn import assessment, claims, quiz
from qlearn.answers import is_close, parse_number
from qlearn.quiz import Question, Quiz, check_prediction

ROOT = Path(__file__).resolve().parents[1]
LESSON_08 = next((ROOT / "notebooks" / "_source").glob("08_*.py"))


@pytest.mark.parametrize("answer, status", [
    (0.5, "right"), (0.51, "right"), (0.49, "right"),          # the edges of tol 0.01 are inside
    (0.5101, "wrong"), (0.4899, "wrong"),
    (1 / 2, "right"), ("1/2", "right"), (" 0.5 ", "right"), ("50%", "right"), (np.float32(0.5), "right"),
    (torch.tensor(0.5), "right"), (torch.tensor([0.5]), "right"), (1, "wrong"),
    (None, "unanswered"), (..., "unanswered"),
    ("half", "right"), ("0.5 GB", "right"),
    (True, "invalid"), ("many", "invalid"), ({"a": 1}, "invalid"), ([0.5, 0.5], "invalid"),
    (torch.tensor([0.5, 0.5]), "invalid"), (float("nan"), "invalid"), (float("inf"), "invalid"), ("1/0", "invalid"),
])
def test_number_tolerance_and_types(answer, status):
    result = Question("Q", "?", 0.5, abs_tol=0.01).check(answer)
    assert result.status == status, result


def test_relative_tolerance_edges():
    q = Question("Q", "?", 200.0, rel_tol=0.05)
    assert [q.check(a).status for a in (190, 210, 189.9, 210.1)] == ["right", "right", "wrong", "wrong"]
    assert q.tolerance == "within 5%" and Question("Q", "?", 1).tolerance == "exactly"


@pytest.mark.parametrize("answer, status", [
    ([80, -127], "right"), ((80, -127), "right"), (torch.tensor([80, -127]), "right"), (np.array([80, -127]), "right"),
    (["80", "-127"], "right"), ([80, -126], "wrong"), ([-127, 80], "wrong"),
    ([80], "invalid"), ([80, -127, 0], "invalid"), ("80, -127", "invalid"), (80, "invalid"), ([80, "x"], "invalid"),
])
def test_number_lists_accept_list_tuple_tensor(answer, status):
    result = Question("Q", "?", [80, -127], kind="numbers").check(answer)
    assert result.status == status, result


@pytest.mark.parametrize("answer, status", [
    ("b", "right"), (" B ", "right"), ("(b)", "right"), ("b.", "right"), ("a", "wrong"),
    ("e", "invalid"), (2, "invalid"), (["b"], "invalid"),
])
def test_choices_are_case_insensitive(answer, status):
    result = Question("Q", "?", "B", kind="choice", choices=("A", "B", "C", "D")).check(answer)
    assert result.status == status, result


@pytest.mark.parametrize("answer, status", [
    (False, "right"), ("false", "right"), (" No ", "right"), (True, "wrong"), ("yes", "wrong"),
    (0, "invalid"), ("maybe", "invalid"),
])
def test_bools(answer, status):
    result = Question("Q", "?", False, kind="bool").check(answer)
    assert result.status == status, result


def test_invalid_answers_say_what_is_expected_and_never_raise():
    msg = Question("Q3", "?", 0.5).check({"a": 1}).message
    assert "must be a number" in msg and "dict" in msg
    msg = Question("Q2", "?", [1, 2], kind="numbers").check([1]).message
    assert "2 numbers" in msg and "got 1" in msg


@pytest.mark.parametrize("kwargs", [dict(kind="essay"), dict(abs_tol=-1), dict(rel_tol=float("nan")),
                                    dict(kind="choice", choices=("A",)), dict(kind="numbers"), dict(kind="ordering")])
def test_bad_question_definitions_are_refused(kwargs):
    with pytest.raises(ValueError):
        Question("Q", "?", "B" if kwargs.get("kind") == "choice" else 1.0, **kwargs)


def test_score_and_summary_explain_only_the_wrong_answers():
    quiz = Quiz([Question("Q1", "?", 1.0, explanation="E1"), Question("Q2", "?", 2.0, explanation="E2"),
                 Question("Q3", "?", 3.0, explanation="E3"), Question("Q4", "?", 4.0, explanation="E4")])
    quiz.check("Q1", 1)
    quiz.check("Q2", 5)
    quiz.check("Q3", None)
    quiz.check("Q4", "four")
    assert quiz.score() == (1, 2, 4)
    text = quiz.summary()
    assert "Score: 1 / 4" in text and "E2" in text and "E1" not in text and "E3" not in text
    assert "Q4" in text and "must be a number" in text
    quiz.check("Q2", 2.0)                     # a rerun replaces the result
    assert quiz.score() == (2, 2, 4)
    with pytest.raises(KeyError, match="Q9"):
        quiz.check("Q9", 1)
    with pytest.raises(ValueError):
        Quiz([Question("Q1", "?", 1), Question("Q1", "?", 2)])


def _lesson_cells(text):
    """The code cells of a percent-format lesson source, in order."""
    cells, current, is_code = [], [], False
    for line in text.splitlines():
        if line.startswith("# %%"):
            if is_code:
                cells.append("\n".join(current))
            current, is_code = [], "[markdown]" not in line
        else:
            current.append(line)
    if is_code:
        cells.append("\n".join(current))
    return cells


def test_lesson_08_answer_cells_default_to_none():
    answers = re.findall(r"^(q\d+) = (.*)$", LESSON_08.read_text(), flags=re.M)
    assert len(answers) >= 18 and all(value.split("#")[0].strip() == "None" for _, value in answers), answers


def test_lesson_08_shows_questions_only_through_quiz_ask():
    """No question, expected value or explanation is written in the lesson: its question cells only ask, its answer
    cells only check (answers live in qlearn.assessment / qlearn.questions, computed at run time)."""
    cells = _lesson_cells(LESSON_08.read_text())
    text = LESSON_08.read_text()
    assert "Question(" not in text and "right_answer" not in text and ".expected" not in text
    asks = [c.strip() for c in cells if "quiz.ask(" in c]
    checks = [c.strip() for c in cells if "quiz.check(" in c]
    assert len(asks) == len(checks) >= 18
    assert all(re.fullmatch(r'print\(quiz\.ask\("Q\d+"\)\)', c) for c in asks), asks
    assert all(re.fullmatch(r'(q\d+) = None   # your answer\nquiz\.check\("Q\d+", \1\)', c, flags=re.I) for c in checks)


def _wrong(q):
    """An answer to `q` that must be marked wrong: outside the tolerance, another choice, the other bool."""
    if q.kind == "number":
        return float(q.expected) + 2 * max(q.abs_tol, q.rel_tol * abs(float(q.expected)), 1.0)
    if q.kind == "numbers":
        return [float(e) + 1000 for e in q.expected]
    if q.kind == "bool":
        return not q.expected
    if q.kind == "choice":
        return next(c for c in q.choices if c != q.expected)
    return list(reversed(q.expected)) if q.kind == "ordering" else "not " + str(q.expected)


def _right_then_wrong(quiz):
    """Answer every question right (full marks), then wrong (no marks); return both scores."""
    for q in quiz.questions:
        assert quiz.check(q.key, quiz.right_answer(q.key)).right, q.key
    full = quiz.score()
    results = {q.key: quiz.check(q.key, _wrong(q)) for q in quiz.questions}
    assert all(r.status == "wrong" for r in results.values()), {k: str(r) for k, r in results.items() if not r.right}
    return full, quiz.score()


def test_the_assessment_scores_right_answers_full_and_wrong_answers_zero():
    quiz = assessment.build_quiz(assessment.demo_run())
    full, none = _right_then_wrong(quiz)
    assert full == (20, 20, 20) and none == (0, 20, 20)
    topics = [q.topic for q in quiz.questions]
    assert sum(t.startswith(("lesson 09", "lesson 10", "lesson 11")) for t in topics) >= 3, topics


def test_every_expected_answer_follows_the_run():
    """The answers that are measured change when the measurement changes: nothing is a literal."""
    base = assessment.demo_run()
    a_first = {"a": 0.0, "b": 1.0, "c": 2.0}
    other = dataclasses.replace(base, footprint={**base.footprint, "nf4+dq": base.footprint["nf4"] - 1},
                                int8_diff=a_first, zero_threshold_diff=a_first, dq_bytes_equal=False, cpu_fused=True,
                                true_bytes={"bf16": 400e6, "nf4+dq": 100e6})
    x = base.x.clone()
    x[:, [100, 200]] *= 40                                              # two more outlier columns
    other = dataclasses.replace(other, x=x)
    a, b = assessment.build_quiz(base), assessment.build_quiz(other)
    moved = {k: (a.right_answer(k), b.right_answer(k)) for k in ("Q4", "Q11", "Q12", "Q13", "Q15", "Q16", "Q17")}
    assert all(x != y for x, y in moved.values()), moved
    assert b.right_answer("Q17") == 4.0 and b.right_answer("Q16") == "fused"
    assert b.right_answer("Q11") == pytest.approx(3 * a.right_answer("Q11"))
    # what the learner sees (prompt, kind of answer, tolerance) is the same whatever the answer is
    assert all(a.ask(q.key) == b.ask(q.key) for q in a.questions)


def test_answers_and_explanations_stay_hidden_until_answered():
    quiz = assessment.build_quiz(assessment.demo_run())
    for q in quiz.questions:
        asked = quiz.ask(q.key)
        assert q.explanation not in asked and "Measured now" not in asked
        assert quiz.check(q.key, None).status == "unanswered" and q.explanation not in quiz.results[q.key].message
    report = assessment.report(quiz)
    assert "Score: 0 / 20" in report and "Not answered yet: Q1, Q2" in report
    assert not any(q.explanation in report for q in quiz.questions)
    right = quiz.check("Q2", quiz.right_answer("Q2"))
    assert right.message == f"right. {quiz['Q2'].explanation}"
    wrong = quiz.check("Q3", 5.0)
    report = assessment.report(quiz)
    assert wrong.status == "wrong" and quiz["Q3"].explanation in wrong.message
    assert "**Q2** right" in report and "**Q3** wrong" in report and quiz["Q3"].explanation in report
    assert quiz["Q4"].explanation not in report and "Score: 1 / 20" in report


@pytest.mark.slow
def test_lesson_08_right_answers_score_full_marks_and_wrong_answers_none(embedded_path, monkeypatch):
    """Run lesson 08's code (fast settings) with every answer cell set to the expected answer: full marks; then
    inject a wrong answer into every question of the same run: each is marked wrong."""
    monkeypatch.setenv("QLEARN_FAST", "1")
    import matplotlib
    matplotlib.use("Agg")
    namespace = {"__name__": "__lesson__"}
    exec("import os\nMODEL_ID = 'embedded'\nFAST = True\nPPL_TOKENS = 256\nMAX_NEW_TOKENS = 12", namespace)
    for cell in _lesson_cells(LESSON_08.read_text()):
        cell = re.sub(r"^(q\d+) = None.*$", lambda m: f"{m.group(1)} = quiz.right_answer('{m.group(1).upper()}')",
                      cell, flags=re.M)
        exec(compile(cell, str(LESSON_08), "exec"), namespace)
    quiz = namespace["quiz"]
    right, answered, total = quiz.score()
    assert total >= 18 and right == answered == total, quiz.summary()
    full, none = _right_then_wrong(quiz)
    assert full == (total, total, total) and none == (0, total, total)
    assert os.environ["QLEARN_FAST"] == "1"


def test_one_tolerance_rule_either_tolerance_suffices():
    """|a - e| <= max(abs_tol, rel_tol * |e|): the larger of the two wins (they do not add up)."""
    rel_wins = Question("Q", "?", 10.0, abs_tol=0.5, rel_tol=0.1)               # max(0.5, 1.0) = 1.0
    assert rel_wins.tolerance == "within 10% or ±0.5"
    assert [rel_wins.check(a).status for a in (11.0, 8.95, 11.1)] == ["right", "wrong", "wrong"]
    abs_wins = Question("Q", "?", 1.0, abs_tol=0.5, rel_tol=0.1)                # max(0.5, 0.1) = 0.5
    assert [abs_wins.check(a).status for a in (1.5, 0.5, 1.6)] == ["right", "right", "wrong"]
    assert Question("Q", "?", 1, rel_tol=0.005).tolerance == "within 0.5%"
    assert is_close(0.51, 0.5, abs_tol=0.01) and not is_close(0.5 + 1e-9, 0.5)   # float rounding only


@pytest.mark.parametrize("text,value", [(0.5, 0.5), (3, 3.0), ("0.5", 0.5), ("1/2", 0.5), ("50%", 0.5),
                                        ("50 %", 0.5), ("half", 0.5), ("A quarter", 0.25), ("36 GB", 36.0),
                                        ("1,024", 1024.0), ("2x", 2.0), ("-3.5e-2", -0.035),
                                        (np.float32(0.25), 0.25), (torch.tensor([2.5]), 2.5)])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("bad,error,said", [
    ("many", ValueError, "got the string 'many'"), ("1/0", ValueError, "'1/0'"), (float("inf"), ValueError, "finite"),
    ([1], TypeError, "got list [1]"), (True, TypeError, "bool True"), (torch.zeros(2), TypeError, "shape (2,)"),
])
def test_parse_number_rejects_naming_the_value(bad, error, said):
    with pytest.raises(error, match=re.escape(said)):
        parse_number(bad, "PREDICT_X")
    with pytest.raises(error, match="PREDICT_X"):
        parse_number(bad, "PREDICT_X")


@pytest.mark.parametrize("prediction, measured, kwargs, status", [
    ("0.6", 0.605, dict(rel_tol=0.05), "right"), (0.5, 0.605, dict(rel_tol=0.05), "wrong"),
    (0.6, 0.605, {}, "wrong"),                                         # no tolerance given: exact
    ("no", False, {}, "right"), ("yes", False, {}, "wrong"), ("it fits", True, {}, "right"),
    (["nf4", "FP4", "int4"], ("NF4", "FP4", "INT4"), {}, "right"),
    ("NF4 < INT4 < FP4", ("NF4", "FP4", "INT4"), {}, "wrong"),
    ("e4m3", "E4M3", {}, "right"), ("e5m2", "E4M3", {}, "wrong"),
    (" (B) ", "b", dict(choices=("a", "b")), "right"), ("c", "b", dict(choices=("a", "b")), "invalid"),
    ([80, -126], [80, -127], dict(abs_tol=1), "right"), ([80, -125], [80, -127], dict(abs_tol=1), "wrong"),
    ("61", np.int64(61), {}, "right"), ("no", np.bool_(False), {}, "right"),
    (5, np.float64(5.004), dict(abs_tol=0.01), "right"), ("lots", 0.605, {}, "invalid"), ("maybe", True, {}, "invalid"),
])
def test_check_prediction_reads_what_measured_is(prediction, measured, kwargs, status):
    assert check_prediction(prediction, measured, **kwargs).status == status


def test_check_prediction_reveals_nothing_before_a_readable_prediction():
    for prediction in (None, ..., "lots"):
        r = check_prediction(prediction, 0.605, rel_tol=0.05, explain="the embeddings stay bf16 (0.605)")
        assert r.status in ("unanswered", "invalid") and "0.605" not in r.message and "embeddings" not in r.message
    r = check_prediction(0.5, 0.605, rel_tol=0.05, explain="the embeddings stay bf16")
    assert r.message == "you predicted 0.5; this run measured 0.605 (within 5%). the embeddings stay bf16"


def test_check_prediction_is_shown_once(capsys):
    r = check_prediction("1/2", 0.503, rel_tol=0.05, unit=" GB")
    assert capsys.readouterr().out == ""                                # returned, not printed as well
    assert str(r) == "[right] prediction: this run measured 0.503 GB (within 5%)."
    assert r._repr_html_().count("this run measured 0.503 GB") == 1
    assert "&lt;" in check_prediction(["a", "b"], ["a", "b"])._repr_html_()   # "a < b" escaped
    assert claims.check_prediction is quiz.check_prediction           # the README's ql.claims.check_prediction


@pytest.mark.parametrize("kwargs, said, ok", [
    (dict(abs_tol=0.5), "(within ±0.5)", True),
    (dict(abs_tol=0.05, unit=" GB"), "(within ±0.05 GB)", False),
    (dict(rel_tol=0.15), "(within 15%)", True),
    (dict(rel_tol=0.01, abs_tol=0.5), "(within 1% or ±0.5)", True),
    ({}, "(exactly)", False),
])
def test_check_prediction_states_the_tolerance_it_used(kwargs, said, ok):
    r = check_prediction(10.4, 10.0, **kwargs)
    assert r.right is ok and said in r.message


def test_check_prediction_lists_are_shown_with_sep():
    r = check_prediction("2, 6", ["2", "6"], sep=", ")
    assert r.right and "measured 2, 6." in r.message
    assert "measured NF4 < FP4." in check_prediction(["nf4", "fp4"], ["NF4", "FP4"]).message
