"""Code books against docs/formats.md, and the NF4 construction from normal quantiles."""

import torch

import qlearn as ql

NF4_FACTS = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def test_nf4_is_the_facts_table_and_the_construction_reproduces_it():
    assert ql.codebooks.NF4.tolist() == NF4_FACTS
    assert torch.equal(ql.codebooks.nf4_from_normal(), ql.codebooks.NF4)
    nf4 = ql.codebooks.NF4
    assert int((nf4 > 0).sum()) == 8 and int((nf4 < 0).sum()) == 7 and int((nf4 == 0).sum()) == 1


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
