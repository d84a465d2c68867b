"""Build-it-yourself exercises (lessons 02, 03, 05, 06): the lesson's own solution scores "right", its stub says
"not written yet", and each check marks plausible wrong implementations wrong, saying what differs."""

import re
import textwrap
from pathlib import Path

import pytest
import torch

import qlearn as ql
from qlearn import bnb_interop, exercises

SOURCES = Path(__file__).resolve().parents[1] / "notebooks" / "_source"
# function the learner completes -> (lesson, its check)
EXERCISES = {"my_absmax_int8": ("02", exercises.check_absmax_int8),
             "my_nearest_nf4": ("03", exercises.check_nearest_nf4), "my_pack_4bit": ("03", exercises.check_pack_4bit),
             "my_double_quant": ("05", exercises.check_double_quant),
             "my_int8_outliers": ("06", exercises.check_int8_outliers)}
NF4 = ql.codebooks.NF4
MIDS = ql.codebooks.midpoints(NF4)


def _source(lesson: str) -> str:
    return next(SOURCES.glob(f"{lesson}_*.py")).read_text()


def _define(code: str, name: str):
    namespace = {"torch": torch, "ql": ql, "NF4": NF4}
    exec(compile(code, f"<{name}>", "exec"), namespace)
    return namespace[name]


def _solution(name: str):
    """The function as the lesson's hidden "Solution" block writes it (the markdown's ```python block)."""
    text = _source(EXERCISES[name][0])
    blocks = re.findall(r"<summary>Solution</summary>\n#\n# ```python\n(.*?)# ```", text, flags=re.S)
    code = [b for b in blocks if f"def {name}(" in b]
    assert len(code) == 1, f"one hidden solution for {name} in lesson {EXERCISES[name][0]}"
    return _define(textwrap.dedent(re.sub(r"^# ?", "", code[0], flags=re.M)), name)


def _stub(name: str):
    """The function as the lesson's code cell gives it to the learner."""
    cells = [c for c in _source(EXERCISES[name][0]).split("# %%") if f"def {name}(" in c and "```" not in c]
    assert len(cells) == 1
    return _define(cells[0], name)


@pytest.fixture(scope="module")
def real():
    """A weight-like tensor with a few large values (the lessons pass a real layer's weight or input)."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 128, generator=g) * 0.02
    w.view(-1)[::611] *= 25
    return w


@pytest.mark.parametrize("name", EXERCISES)
def test_the_lessons_solution_is_right_and_equals_bitsandbytes(name, real):
    lesson, check = EXERCISES[name]
    result = check(_solution(name), real=real)
    assert result.status == "right", result
    assert "byte for byte" in result.message
    if bnb_interop.available():
        if name == "my_double_quant":
            assert "offset equal, nested absmax equal" in result.message
        else:
            n = re.search(r"on all (\d+) cases", result.message).group(1)
            assert f"on {n} of {n} cases" in result.message, result.message


@pytest.mark.parametrize("name", EXERCISES)
def test_the_stub_runs_and_says_not_written_yet(name):
    lesson, check = EXERCISES[name]
    stub = _stub(name)
    with pytest.raises(NotImplementedError):
        stub(*([torch.zeros(2, 2), 6.0] if name == "my_int8_outliers" else [torch.zeros(4)]))
    result = check(stub)
    assert result.status == "unanswered" and "not written yet" in result.message
    assert re.search(rf"ql\.exercises\.{check.__name__}\({name}, real=", _source(lesson)), "the lesson's check cell"


# ---- wrong implementations: each check fails on at least two plausible ones, and says where ----------------

def _absmax(x, rounding=torch.round, absmax=lambda x: x.abs().max(), qmax=127):
    scale = absmax(x) / qmax
    if scale == 0:
        return torch.zeros_like(x, dtype=torch.int8), scale
    return rounding(x / scale).clamp(-127, 127).to(torch.int8), scale


def _pack(codes, pad=7, swap=False):
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_tensor([pad])])
    hi, lo = (codes[1::2], codes[0::2]) if swap else (codes[0::2], codes[1::2])
    return (hi << 4) | lo


def _dq(absmax, subtract=True, blocksize=256, offset=torch.mean):
    off = offset(absmax)
    nested = ql.quantize_blockwise_8bit(absmax - off if subtract else absmax, blocksize=blocksize)
    return nested.codes, off, nested.absmax


def _split(x, threshold, ge=True, drop_values=True, whole_columns_first=False, rounding=torch.round):
    out = (x.abs() >= threshold if ge else x.abs() > threshold) if threshold > 0 else torch.zeros_like(x, dtype=bool)
    cols = torch.argwhere(out.any(dim=0)).view(-1)
    kept = x.clone()
    if whole_columns_first:
        kept[:, cols] = 0
    elif drop_values:
        kept = x.masked_fill(out, 0.0)
    row_absmax = kept.abs().amax(dim=1)
    codes = torch.where(row_absmax[:, None] > 0, rounding(kept * (127 / row_absmax)[:, None]), 0.0).to(torch.int8)
    codes[:, cols] = 0
    return codes, row_absmax, cols


WRONG = [
    ("my_absmax_int8", lambda x: _absmax(x, rounding=torch.floor), "codes:"),                  # floor, not round
    ("my_absmax_int8", lambda x: _absmax(x, rounding=torch.trunc), "codes:"),                  # .to(int8) truncates
    ("my_absmax_int8", lambda x: _absmax(x, absmax=lambda x: x.max()), "scale:"),              # max, not max |x|
    ("my_absmax_int8", lambda x: _absmax(x, qmax=128), "scale:"),                              # 2**7, not 127
    ("my_nearest_nf4", lambda v: (v[:, None] - NF4).abs().argmin(1), "midpoints"),            # ties go either way
    ("my_nearest_nf4", lambda v: torch.bucketize(v, MIDS, right=True), "midpoints"),          # ties go up
    ("my_nearest_nf4", lambda v: torch.round(v * 7.5 + 7.5).long(), "codes:"),                # uniform int4 levels
    ("my_pack_4bit", lambda c: _pack(c, swap=True), "yours 0xc3, expected 0x3c"),            # nibbles swapped
    ("my_pack_4bit", lambda c: _pack(c, pad=0), "yours 0xc0, expected 0xc7"),                # padded with 0
    ("my_pack_4bit", lambda c: (c[0::2] << 4) | c[1::2], "raised"),                          # no padding at all
    ("my_double_quant", lambda a: _dq(a, subtract=False), "nested_absmax:"),                 # offset not subtracted
    ("my_double_quant", lambda a: _dq(a, blocksize=4096), "nested_absmax"),                  # nested blocks of 4096
    ("my_double_quant", lambda a: _dq(a, offset=lambda t: t.median()), "offset:"),           # median, not mean
    ("my_int8_outliers", lambda x, t: _split(x, t, ge=False), "exactly at the threshold"),   # > instead of >=
    ("my_int8_outliers", lambda x, t: _split(x, t, drop_values=False), "row_absmax:"),      # outliers kept in absmax
    ("my_int8_outliers", lambda x, t: _split(x, t, whole_columns_first=True), "row_absmax:"),  # whole columns dropped
    ("my_int8_outliers", lambda x, t: _split(x, t, rounding=torch.floor), "codes:"),         # floor, not round
]


@pytest.mark.parametrize("name, fn, said", WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_wrong_implementations_are_marked_wrong(name, fn, said, real):
    result = EXERCISES[name][1](fn, real=real)
    assert result.status == "wrong", result
    assert said in result.message, result.message


def test_each_check_catches_at_least_two_wrong_implementations():
    counts = {name: sum(n == name for n, _, _ in WRONG) for name in EXERCISES}
    assert min(counts.values()) >= 2, counts


def test_the_argmin_claim_of_lesson_03():
    """Lesson 03's hint: argmin of the distances picks the upper code on 6 of the 15 midpoints."""
    argmin = (MIDS[:, None] - NF4).abs().argmin(1)
    assert int((argmin != torch.arange(15)).sum()) == 6
    assert "on 6 of the 15 midpoints" in _source("03")


@pytest.mark.parametrize("fn, said", [
    (lambda x: (x.tolist(), 1.0), "codes must be a torch tensor, got list"),
    (lambda x: (torch.round(x), torch.tensor(1.0)), "dtype torch.int8"),
    (lambda x: torch.zeros_like(x, dtype=torch.int8), "return two things"),
    (lambda x: (torch.zeros_like(x, dtype=torch.int8), torch.ones(2)), "scale must be one number"),
])
def test_the_wrong_kind_of_output_is_invalid_and_says_what_is_expected(fn, said):
    result = exercises.check_absmax_int8(fn)
    assert result.status == "invalid" and said in result.message, result


def test_a_crash_and_a_non_function_are_reported_not_raised():
    result = exercises.check_pack_4bit(lambda c: c.undefined_method())
    assert result.status == "wrong" and "raised AttributeError" in result.message
    assert exercises.check_pack_4bit(None).status == "invalid"
    with pytest.raises(TypeError, match="real must be"):
        exercises.check_absmax_int8(_solution("my_absmax_int8"), real=[1.0, 2.0])


def test_a_wrong_answer_names_the_case_the_element_and_both_values():
    result = exercises.check_absmax_int8(lambda x: _absmax(x, rounding=torch.floor))
    assert "lesson 02's eight numbers: codes: 3 of 8 differ, first at index 1 (input -0.02): yours -3, expected -2" \
        in result.message


def test_either_rounding_order_of_absmax_int8_is_right(real):
    """x / (max|x| / 127) (qlearn, lesson 02) and x * (127 / max|x|) (bitsandbytes) give the same codes on every case
    the check uses, so a learner who writes either one is right."""
    def times(x):
        a = x.abs().max()
        codes = torch.round(x * (127 / a)) if a > 0 else torch.zeros_like(x)
        return codes.to(torch.int8), a / 127

    result = exercises.check_absmax_int8(times, real=real)
    assert result.status == "right", result
