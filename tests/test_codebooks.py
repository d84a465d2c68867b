"""Code books against bitsandbytes' tables and the papers' rules, and the NF4 construction from normal quantiles."""

import statistics

import pytest
import torch

import qlearn as ql


def _qlora_nf4(offset=0.9677083):
    """NF4 as the QLoRA paper builds it (its ``create_normal_map``), recomputed here with the standard library's
    normal quantiles in float64: 8 positive quantiles of linspace(offset, 0.5, 9), 7 negative ones of
    linspace(offset, 0.5, 8), and 0, sorted and divided by the largest."""
    def linspace(a, b, n):
        return [a + (b - a) * i / (n - 1) for i in range(n)]

    q = statistics.NormalDist().inv_cdf
    positive, negative = linspace(offset, 0.5, 9)[:-1], linspace(offset, 0.5, 8)[:-1]
    values = sorted([q(p) for p in positive] + [0.0] + [-q(p) for p in negative])
    return torch.tensor([v / values[-1] for v in values], dtype=torch.float64)


def test_nf4_is_bitsandbytes_table():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(ql.codebooks.NF4, bnbf.get_4bit_type("nf4", device="cpu").float())


def test_nf4_is_the_papers_construction_and_ours_reproduces_it():
    paper = _qlora_nf4()
    # within one float32 step: the paper's quantiles (scipy) and the standard library's differ in the last bits
    assert float((ql.codebooks.NF4.double() - paper).abs().max()) < 2e-7
    assert torch.equal(ql.codebooks.nf4_from_normal(), ql.codebooks.NF4)
    nf4 = ql.codebooks.NF4
    assert int((nf4 > 0).sum()) == 8 and int((nf4 < 0).sum()) == 7 and int((nf4 == 0).sum()) == 1
    assert float((ql.codebooks.nf4_from_normal(0.99).double() - _qlora_nf4(0.99)).abs().max()) < 2e-7


def test_nf4_construction_depends_on_the_offset():
    other = ql.codebooks.nf4_from_normal(0.99)
    assert other[0] == -1 and other[-1] == 1 and not torch.equal(other, ql.codebooks.NF4)


def test_fp4_is_bitsandbytes_table_not_e2m1():
    # bitsandbytes' FP4 from its bit rule: bit 3 the sign, bits 2-1 an exponent e, bit 0 a mantissa m;
    # magnitude 2**(4 - e) * (1 + m / 2) for e > 0, the pattern 001 is 0.0625, 000 is 0; all divided by 12
    for code in range(16):
        sign = -1.0 if code & 8 else 1.0
        e, m = (code >> 1) & 3, code & 1
        magnitude = (2.0 ** (4 - e) * (1 + m / 2)) if e else (0.0625 if m else 0.0)
        assert ql.codebooks.FP4[code] == torch.tensor(sign * magnitude / 12, dtype=torch.float32), code
    e2m1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    assert {abs(v) * 12 for v in ql.codebooks.FP4.tolist()} != e2m1
    assert all(ql.codebooks.FP4[i] <= 0 for i in range(8, 16))   # bit 3 is the sign


def test_dynamic_map_shape_and_ends():
    m = ql.codebooks.dynamic_map()
    assert m.numel() == 256 and float(m.max()) == 1.0 and -1.0 not in m.tolist()
    assert float(m.min()) == torch.tensor(-0.99296875).item()
    assert bool((m[1:] >= m[:-1]).all())


def test_int_grids():
    assert ql.codebooks.int_grid(8).numel() == 255 and ql.codebooks.int_grid(8)[0] == -127
    assert ql.codebooks.int_grid(4, signed=False).tolist() == list(range(16))
