"""Granularity: group / ungroup views and the groups of a quantization result, on known numbers."""

import pytest
import torch

import qlearn as ql
from qlearn.granularity import group, group_values, n_groups, ungroup


def test_group_per_tensor_per_axis_per_block():
    x = torch.arange(12.).view(3, 4)
    assert group(x, None, None).shape == (1, 12)
    assert group(x, 0, None).tolist() == x.tolist()                        # one group a row
    assert group(x, 1, None).tolist() == x.T.tolist()                      # one group a column
    assert group(x, None, 5).tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 11, 11, 11]]   # padded


@pytest.mark.parametrize("axis, blocksize", [(None, None), (0, None), (1, None), (-1, None), (None, 5), (None, 4)])
def test_ungroup_inverts_group(axis, blocksize):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ungroup(group(x, axis, blocksize), x.shape, axis), x)


def test_padding_keeps_the_absmax_of_a_partial_block():
    x = torch.tensor([1.0, -3.0, 2.0, 0.5, -0.25, 0.75])                  # the last block: [-0.25, 0.75]
    blocks = group(x, None, 4)
    assert blocks[1].tolist() == [-0.25, 0.75, 0.75, 0.75]                   # padded with its last value
    assert blocks.abs().amax(dim=1).tolist() == [3.0, 0.75] and blocks.amin(dim=1).tolist() == [-3.0, -0.25]


def test_bad_granularity_names_the_value():
    with pytest.raises(ValueError, match="not both"):
        group(torch.ones(4), 0, 2)
    with pytest.raises(ValueError, match="got 0"):
        group(torch.ones(4), None, 0)
    with pytest.raises(ValueError, match="axis must be an integer in -2..1"):
        group(torch.ones(2, 2), 2, None)


def test_groups_of_a_result():
    x = ql.sources.synthetic("normal", 65536, seed=0, shape=(64, 1024))
    nf4 = ql.quantize_4bit(x, "nf4", 128)
    assert n_groups(nf4) == 512
    assert n_groups(ql.absmax_quantize(x, 4)) == 1
    assert n_groups(ql.zeropoint_quantize(x, 4, axis=0)) == 64
    assert torch.equal(group_values(x, nf4, 2), x.reshape(-1)[256:384])
    assert torch.equal(group_values(x, ql.absmax_quantize(x, 4, axis=0), 7), x[7])
    assert torch.equal(group_values(x, ql.absmax_quantize(x, 4), 0), x.reshape(-1))


def test_group_values_of_a_partial_block_has_no_padding():
    x = torch.arange(10.)
    r = ql.absmax_quantize(x, 4, blocksize=4)
    assert n_groups(r) == 3 and group_values(x, r, 2).tolist() == [8.0, 9.0]
