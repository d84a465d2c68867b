"""qlearn.quiz: tolerant answer checking, the score, and lesson 08 answered right scores full marks."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from qlearn.quiz import Question, Quiz

ROOT = Path(__file__).resolve().parents[1]
LESSON_08 = next((ROOT / "notebooks" / "_source").glob("08_*.py"))


@pytest.mark.parametrize("answer, status", [
    (0.5, "right"), (0.51, "right"), (0.49, "right"),          # the edges of tol 0.01 are inside
    (0.5101, "wrong"), (0.4899, "wrong"),
    (1 / 2, "right"), ("1/2", "right"), (" 0.5 ", "right"), ("50%", "right"), (np.float32(0.5), "right"),
    (torch.tensor(0.5), "right"), (torch.tensor([0.5]), "right"), (1, "wrong"),
    (None, "unanswered"), (..., "unanswered"),
    (True, "invalid"), ("half", "invalid"), ({"a": 1}, "invalid"), ([0.5, 0.5], "invalid"),
    (torch.tensor([0.5, 0.5]), "invalid"), (float("nan"), "invalid"), (float("inf"), "invalid"), ("1/0", "invalid"),
])
def test_number_tolerance_and_types(answer, status):
    result = Question("Q", "?", 0.5, tol=0.01).check(answer)
    assert result.status == status, result


def test_relative_tolerance_edges():
    q = Question("Q", "?", 200.0, rel_tol=0.05)
    assert [q.check(a).status for a in (190, 210, 189.9, 210.1)] == ["right", "right", "wrong", "wrong"]
    assert q.tolerance == "within 5%" and Question("Q", "?", 1).tolerance == "exact"


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


@pytest.mark.parametrize("kwargs", [dict(kind="text"), dict(tol=-1), dict(kind="choice", choices=("A",)),
                                    dict(kind="numbers")])
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
    assert len(answers) >= 12 and all(value.split("#")[0].strip() == "None" for _, value in answers), answers


def test_lesson_08_answered_right_scores_full_marks(embedded_path, monkeypatch):
    """Run lesson 08's code (fast settings) with every answer cell set to the expected answer."""
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
    assert total >= 12 and right == answered == total, quiz.summary()
    assert os.environ["QLEARN_FAST"] == "1"


def test_tolerance_words_match_the_rule():
    assert Question("Q", "?", 1, rel_tol=0.005).tolerance == "within 0.5%"        # was "within 0%"
    both = Question("Q", "?", 10.0, tol=0.5, rel_tol=0.1)
    assert both.tolerance == "within 0.5 + 10% of the value"
    assert both.check(11.5).status == "right" and both.check(11.6).status == "wrong"   # 0.5 + 1.0 = 1.5


def test_check_prediction_reveals_nothing_before_a_prediction(capsys):
    from qlearn.quiz import check_prediction
    r = check_prediction(None, 0.605, rel_tol=0.05, explain="the embeddings stay bf16 (0.605)")
    assert r.status == "unanswered" and "0.605" not in r.message and "embeddings" not in r.message
    assert "0.605" in check_prediction(0.5, 0.605, rel_tol=0.05).message
    capsys.readouterr()
