"""Code books against FACTS.md, and the NF4 construction from normal quantiles."""

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
    raw = [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]
    assert torch.equal(ql.codebooks.FP4, torch.tensor(raw) / 12)
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
