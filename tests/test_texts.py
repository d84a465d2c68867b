"""The fixed texts: pinned, the same on every Python, and disjoint (evaluation vs calibration)."""

import hashlib
import re
from pathlib import Path

import pytest

import qlearn as ql
from qlearn import calibration, texts

SRC = Path(__file__).resolve().parent.parent / "src" / "qlearn"


@pytest.mark.parametrize("name", sorted(texts.TEXTS))
def test_each_text_has_its_pinned_sha256_and_length(name):
    text = texts.read_text(name)
    _, sha256, chars = texts.TEXTS[name]
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == sha256
    assert len(text) == chars


def test_the_evaluation_text_is_the_pinned_one_and_not_the_interpreters():
    assert ql.evaluate.OFFLINE_TEXT_SHA256 == texts.TEXTS["evaluation"][1]
    assert hashlib.sha256(ql.evaluate.offline_text().encode()).hexdigest() == ql.evaluate.OFFLINE_TEXT_SHA256
    assert calibration.calibration_text("sensitivity") == texts.read_text("sensitivity")
    assert calibration.calibration_text("methods") == texts.read_text("methods")


def test_no_module_reads_pydoc_data_or_stdlib_docstrings_for_a_text():
    reads = r"(import|from) pydoc_data|import_module\([^)]*\)\.__(about|doc)__|inspect\.getdoc\("
    offenders = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if re.search(reads, p.read_text())]
    assert offenders == []


def test_a_corrupted_text_is_refused(monkeypatch):
    texts.read_text.cache_clear()
    monkeypatch.setitem(texts.TEXTS, "evaluation", (texts.TEXTS["evaluation"][0], "0" * 64, 1))
    with pytest.raises(RuntimeError, match="does not match its pinned sha256"):
        texts.read_text("evaluation")
    texts.read_text.cache_clear()


def test_bad_names_are_named():
    with pytest.raises(ValueError, match="name must be one of 'evaluation', 'sensitivity', 'methods'; got 'wiki'"):
        texts.read_text("wiki")
    with pytest.raises(ValueError, match="kind must be one of 'sensitivity', 'methods'; got 'evaluation'"):
        calibration.calibration_text("evaluation")
