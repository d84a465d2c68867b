"""Levels: the one grid of values each format's codes stand for, checked on worked numbers."""

import pytest
import torch

import qlearn as ql
from qlearn import codebooks
from qlearn.levels import code_values, codes_of, levels_of, to_unit_scale, unit_levels


@pytest.fixture(scope="module")
def x():
    return ql.sources.synthetic("normal", 65536, seed=0, shape=(64, 1024))


def test_int4_absmax_levels_are_minus_7_to_7_times_the_scale():
    r = ql.absmax_quantize(torch.tensor([0.7, -0.2, 0.1]), bits=4)
    assert float(r.scale) == pytest.approx(0.1)
    assert codes_of(r).tolist() == list(range(-7, 8))
    assert torch.equal(levels_of(r), torch.arange(-7, 8, dtype=torch.float32) * r.scale)
    assert levels_of(r)[[0, 10, -1]].tolist() == pytest.approx([-0.7, 0.3, 0.7])


def test_zeropoint_levels_move_with_the_zero_point():
    r = ql.zeropoint_quantize(torch.tensor([-1.0, 2.0]), bits=2)        # scale 3 / 3 = 1, zero point 1
    assert (float(r.scale), float(r.zero_point)) == (1.0, 1.0)
    assert codes_of(r).tolist() == [0, 1, 2, 3]
    assert levels_of(r).tolist() == [-1.0, 0.0, 1.0, 2.0]


def test_4bit_levels_are_the_code_book_times_the_block_absmax(x):
    nf4, fp4 = ql.quantize_4bit(x, "nf4", 128), ql.quantize_4bit(x, "fp4", 128)
    absmax = float(x.reshape(-1)[256:384].abs().max())
    assert torch.equal(code_values(nf4, 2), codebooks.NF4 * absmax)
    assert levels_of(nf4, 2).numel() == 16
    assert levels_of(fp4, 2).numel() == 15                                # FP4's +0 and -0 are one value
    assert float(levels_of(fp4, 2).abs().max()) == pytest.approx(absmax)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_level_counts_of_each_scheme(x, bits):
    assert levels_of(ql.absmax_quantize(x, bits)).numel() == 2 ** bits - 1
    assert levels_of(ql.zeropoint_quantize(x, bits, blocksize=64), 5).numel() == 2 ** bits
    r = ql.absmax_quantize(x, bits, axis=0)
    assert torch.allclose(levels_of(r, 3).abs().max(), x[3].abs().max())


def test_every_dequantized_value_is_one_of_its_groups_levels(x):
    for r in (ql.absmax_quantize(x, 3, blocksize=256), ql.zeropoint_quantize(x, 3, blocksize=256),
              ql.quantize_4bit(x, "nf4", 256)):
        deq = r.dequantize(torch.float32).reshape(-1, 256)
        for g in (0, 17, 255):
            assert torch.isin(deq[g], levels_of(r, g)).all()


def test_unit_levels_and_unit_scale(x):
    assert unit_levels(ql.absmax_quantize(x, 4)).tolist() == pytest.approx([k / 7 for k in range(-7, 8)])
    assert torch.equal(unit_levels(ql.quantize_4bit(x, "nf4")), codebooks.NF4)
    nf4 = ql.quantize_4bit(x, "nf4", 64)
    unit = to_unit_scale(x, nf4)
    assert unit.shape == x.shape and float(unit.abs().max()) == 1.0
    assert unit.reshape(-1, 64).abs().amax(dim=1).eq(1.0).all()            # every block reaches +-1
    r = ql.absmax_quantize(x, 4, axis=0)
    assert torch.allclose(to_unit_scale(x, r)[5], x[5] / x[5].abs().max())
    with pytest.raises(TypeError, match="zero-point"):
        unit_levels(ql.zeropoint_quantize(x, 4))


def test_not_a_result_is_a_type_error(x):
    with pytest.raises(TypeError, match="quantization result"):
        levels_of(x)


def test_nf4_construction_reuses_the_code_book_construction():
    p, z = codebooks.nf4_quantiles()
    assert p.shape == z.shape == (15,) and bool((z[1:] > z[:-1]).all())
    assert torch.allclose(codebooks.normal_cdf(z.double()).float(), p, atol=1e-6)   # P(Z <= z) = p
    assert float(p[-1]) == pytest.approx(codebooks.NF4_OFFSET) and float(z[-1]) == pytest.approx(1.8481, abs=1e-4)
    parts = codebooks.nf4_construction()
    assert torch.equal(parts["values"], codebooks.NF4) and torch.equal(parts["z"], z)
    assert not torch.equal(codebooks.nf4_construction(0.99)["values"], codebooks.NF4)
    with pytest.raises(ValueError, match="offset"):
        codebooks.nf4_quantiles(0.4)
