"""Lesson 13 ("the questions people ask") read as source: at least 12 questions, each quoted with its thread,
each answered by a Markdown f-string that reads values computed in the run and types no measurement itself;
at least 10 distinct threads cited; the summary built from the same answers."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebooks" / "_source" / "13_questions_people_ask.py"
THREAD = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+)/(?:issues|pull)/(\d+)")
# a typed measurement in an answer's literal text: a decimal (0.57, 3.49) or a number with a unit (51%, 110 MB, 4x)
TYPED = re.compile(r"(?<![\w#.])\d+\.\d+(?![\d.])|(?<![\w#.])\d[\d,]*\s?(?:%|MB|GB|kB|ms|GFLOP|x\b)")


def _cells():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return builder.parse(SOURCE.read_text())


CELLS = _cells()


def _assigned(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, (ast.For, ast.comprehension)):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom)):
            names |= {node.name} if isinstance(node, ast.FunctionDef) else {a.asname or a.name for a in node.names}
        for t in targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _constants(tree) -> set[str]:
    """Names assigned only a literal (typed by hand, not computed): FAST-mode sizes, PREDICT_* placeholders."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def _answer_cells():
    """{N: (cell index, the Markdown f-string node)} for each code cell that displays "**Answer (N).**"."""
    found = {}
    for i, (kind, src) in enumerate(CELLS):
        if kind != "code" or "**Answer (" not in src:
            continue
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Markdown" and node.args \
                    and isinstance(node.args[0], ast.JoinedStr):
                text = "".join(v.value for v in node.args[0].values if isinstance(v, ast.Constant))
                m = re.search(r"\*\*Answer \((\d+)\)\.\*\*", text)
                if m:
                    found[int(m.group(1))] = (i, node.args[0])
    return found


ANSWERS = _answer_cells()


def test_at_least_twelve_questions_are_answered():
    assert len(ANSWERS) >= 12, sorted(ANSWERS)
    assert set(ANSWERS) <= set(range(1, 15))


@pytest.mark.parametrize("number", sorted(ANSWERS))
def test_each_answer_reads_values_computed_earlier_in_the_run(number):
    index, fstring = ANSWERS[number]
    earlier = ast.parse("\n".join(src for kind, src in CELLS[:index + 1] if kind == "code"))
    computed = _assigned(earlier) - _constants(earlier)
    used = {n.id for v in fstring.values if isinstance(v, ast.FormattedValue)
            for n in ast.walk(v.value) if isinstance(n, ast.Name)}
    measured = used & computed - {"ql", "torch", "pd", "mb", "info"}
    assert measured, f"answer {number} reads no value computed in the run (it uses {sorted(used)})"


@pytest.mark.parametrize("number", sorted(ANSWERS))
def test_no_answer_types_a_measurement(number):
    literal = "".join(v.value for v in ANSWERS[number][1].values if isinstance(v, ast.Constant))
    typed = TYPED.findall(literal)
    assert not typed, f"answer {number} types {typed} instead of reading them from the run"


def test_the_typed_number_check_catches_numbers():
    assert TYPED.findall("ran at 0.57x, 51% of 110 MB, 4x smaller") == ["0.57", "51%", "110 MB", "4x"]
    assert not TYPED.findall("PR #2077, Q4_K, 4-bit, float16, lesson 12, W4A32")


def _sections():
    """{N: the markdown of the section '### QN. ...' up to the next question}."""
    text = "\n".join(src for kind, src in CELLS if kind == "markdown")
    parts = re.split(r"^### Q(\d+)\b", text, flags=re.M)
    out = {}
    for number, body in zip(parts[1::2], parts[2::2], strict=True):
        out.setdefault(int(number), "")
        out[int(number)] += body
    return out


def test_each_answered_question_is_quoted_with_its_thread():
    sections = _sections()
    for number in ANSWERS:
        body = sections.get(number, "")
        assert THREAD.search(body), f"Q{number}: no GitHub issue or pull request link"
        assert re.search(r'"[^"]{8,}"', body), f"Q{number}: no quoted question"


def test_at_least_ten_distinct_threads_are_cited():
    threads = set(THREAD.findall("\n".join(src for _, src in CELLS)))
    assert len(threads) >= 10, sorted(threads)


def test_the_summary_is_built_from_the_measured_answers():
    code = [src for kind, src in CELLS if kind == "code"]
    assigned = {int(m) for src in code for m in re.findall(r"^answers\[(\d+)\] = \(", src, flags=re.M)}
    assert assigned == set(ANSWERS)
    for src in code:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and getattr(t.value, "id", "")
                                                    == "answers" for t in node.targets):
                one_line = node.value.elts[1]
                assert isinstance(one_line, ast.JoinedStr) and any(
                    isinstance(v, ast.FormattedValue) for v in one_line.values), ast.unparse(node)[:80]
    summary = next(src for src in code if "## Summary (measured in this run)" in src)
    assert "answers.items()" in summary
