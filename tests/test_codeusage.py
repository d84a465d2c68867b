"""Code usage: counts per code, occupancy, entropy in bits, distinct values per block, on known numbers."""

import math

import numpy as np
import pytest
import torch

import qlearn as ql
from qlearn.codeusage import code_counts, distinct_per_block, entropy_bits, occupancy


@pytest.fixture(scope="module")
def x():
    return ql.sources.synthetic("normal", 65536, seed=0, shape=(64, 1024))


def test_entropy_of_known_distributions():
    assert entropy_bits(torch.full((16,), 1 / 16)) == 4.0                  # uniform 16 codes: 4 bits
    assert entropy_bits(np.full(16, 1 / 16)) == 4.0                        # arrays too
    assert entropy_bits([0.5, 0.25, 0.25]) == 1.5
    assert entropy_bits([1.0, 0.0, 0.0]) == 0.0                            # zeros skipped, no NaN
    assert entropy_bits(torch.full((15,), 1 / 15)) == pytest.approx(math.log2(15))


def test_code_counts_of_a_known_tensor():
    r = ql.absmax_quantize(torch.tensor([1.0, 0.0, -1.0, 1.0]), bits=2)    # codes 1, 0, -1, 1
    assert code_counts(r).tolist() == [1, 1, 2]
    z = ql.zeropoint_quantize(torch.tensor([-1.0, 2.0, 2.0, 0.0]), bits=2)  # scale 1, zero point 1: codes 0, 3, 3, 1
    assert code_counts(z).tolist() == [1, 1, 0, 2]
    nf4 = ql.quantize_4bit(torch.tensor([-1.0, 0.0, 0.0, 1.0]), "nf4")    # codes 0, 7, 7, 15
    assert code_counts(nf4).tolist() == [1] + [0] * 6 + [2] + [0] * 7 + [1]


def test_occupancy_merges_fp4_plus_and_minus_zero():
    fp4 = ql.quantize_4bit(torch.tensor([1.0, 0.0, 0.0, -1.0]), "fp4")
    levels, share = occupancy(fp4)
    assert len(levels) == 15 and share.dtype == torch.float64
    assert {float(v): float(s) for v, s in zip(levels, share, strict=True) if s} == {-1.0: 0.25, 0.0: 0.5, 1.0: 0.25}


def test_occupancy_of_a_uniform_int4_grid_is_uniform():
    r = ql.absmax_quantize(torch.arange(-7.0, 8.0), bits=4)               # scale 1: every code once
    levels, share = occupancy(r)
    assert levels.tolist() == pytest.approx([k / 7 for k in range(-7, 8)])
    assert torch.equal(share, torch.full((15,), 1 / 15, dtype=torch.float64))
    assert entropy_bits(share) == pytest.approx(math.log2(15))


def test_occupancy_on_normal_weights(x):
    levels, share = occupancy(ql.quantize_4bit(x, "nf4", 64))
    assert len(levels) == 16 and float(share.sum()) == pytest.approx(1.0)
    # the +-1 ends hold about one value a block (1/64); the 14 inner levels 3.5% .. 9.5%, near 1/16
    assert float(share[0]) == pytest.approx(1 / 64, abs=0.004) and float(share[-1]) == pytest.approx(1 / 64, abs=0.004)
    assert 0.035 < float(share[1:-1].min()) and float(share.max()) < 0.095
    nf4_bits = entropy_bits(share)
    int4_bits = entropy_bits(occupancy(ql.absmax_quantize(x, 4, blocksize=64))[1])
    assert nf4_bits > 3.85 and nf4_bits > int4_bits + 0.2
    with pytest.raises(TypeError, match="zero-point"):
        occupancy(ql.zeropoint_quantize(x, 4))


def test_distinct_per_block_on_a_known_tensor():
    w = torch.tensor([1., 1., 2., 3., 5., 5., 5., 5., 1., 2., 3., 4., 9.])   # 3 blocks of 4 and a partial one
    assert distinct_per_block(w, 4).tolist() == [3, 1, 4]
    assert distinct_per_block(w.to(torch.bfloat16), 4).tolist() == [3, 1, 4]
    with pytest.raises(ValueError, match="got 0"):
        distinct_per_block(w, 0)


def test_distinct_per_block_tells_an_already_quantized_tensor():
    w = ql.sources.synthetic("normal", 32 * 64, seed=0)
    q41 = ql.zeropoint_quantize(w, 4, blocksize=32, zero_point_domain="float").dequantize()
    assert int(distinct_per_block(q41, 32).max()) <= 16
    assert int(distinct_per_block(w, 32).min()) == 32
