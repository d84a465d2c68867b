"""Value ranges, histograms, samples; per-value errors and SQNR per layer; outlier columns."""

import numpy as np
import pytest
import torch
from torch import nn

import qlearn as ql
from qlearn.distribution import SAMPLE, histogram, sample, value_range
from qlearn.metrics import error_stats, errors, sqnr_per_layer
from qlearn.outliers import column_absmax, share_above


def test_value_range_pads_the_span():
    assert value_range(torch.tensor([0.0, 1.0])) == pytest.approx((-0.02, 1.02))
    assert value_range(torch.tensor([0.0, 0.5]), torch.tensor([1.0])) == pytest.approx((-0.02, 1.02))
    lo, hi = value_range(torch.full((3,), 2.0))                          # a constant gets a tiny span
    assert lo < 2.0 < hi and hi - lo < 1e-6


def test_histogram_counts_and_edges():
    counts, edges = histogram(torch.tensor([0.0, 0.5, 1.0, 2.0]), 2, 0.0, 1.0)   # 2.0 is outside
    assert counts.tolist() == [1.0, 2.0] and edges.tolist() == [0.0, 0.5, 1.0]
    counts, edges = histogram(torch.randn(1000), 80, -3.3, 2.9)
    assert np.array_equal(edges.numpy(), np.linspace(-3.3, 2.9, 81))      # the same edges as numpy's


def test_histogram_counts_big_tensors_by_sampling():
    big = torch.randn(2 ** 20, generator=torch.Generator().manual_seed(0))
    counts, edges = histogram(big, 50, -6.0, 6.0)
    assert len(edges) == 51 and float(counts.sum()) == pytest.approx(2 ** 20, rel=1e-3)
    assert float(counts.sum()) % 4 == 0 and 2 ** 20 // SAMPLE == 4         # every 4th value, times 4


def test_sample_takes_the_same_positions_for_any_tensor_of_that_size():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample(2 * x, 100), 2 * sample(x, 100))            # value by value
    assert torch.equal(sample(torch.arange(5000.0), 100), sample(torch.arange(5000.0).view(50, 100), 100))
    assert sample(x, 100).shape == (100,) and sample(x[:10], 100).shape == (10,)
    assert not torch.equal(sample(x, 100, seed=1), sample(x, 100))


def test_errors_and_error_stats_agree():
    x = torch.tensor([1.0, -1.0])
    x_hat = torch.tensor([0.9, -1.0])
    assert errors(x, x_hat).tolist() == pytest.approx([-0.1, 0.0])
    assert error_stats(x, x_hat)["max_abs"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same shape"):
        errors(x, x_hat[:1])


def test_sqnr_per_layer_is_error_stats_per_weight():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    layers = list(ql.sources.linear_layers(model))
    sqnr = sqnr_per_layer(layers, lambda w: ql.quantize_4bit(w, "nf4", 64))
    assert list(sqnr) == ["0", "2"]
    for name, w in layers:
        assert sqnr[name] == error_stats(w, ql.quantize_4bit(w, "nf4", 64).dequantize())["sqnr_db"]
    assert 15 < sqnr["0"] < 25                                            # NF4 in blocks of 64: ~20 dB


def test_outlier_columns_are_the_columns_int8_vectorwise_keeps():
    torch.manual_seed(0)
    inputs = torch.randn(12, 300)
    inputs[:, [5, 17]] *= 30
    cols = column_absmax(inputs)
    assert torch.equal(cols, inputs.abs().amax(dim=0))
    for t in (1.0, 3.0, 6.0, 20.0):
        kept = set(ql.int8_vectorwise(inputs, threshold=t).outlier_cols.tolist())
        assert kept == set(torch.nonzero(cols >= t).view(-1).tolist())
        assert float(share_above(cols, [t])[0]) == pytest.approx(len(kept) / 300)
    assert share_above(torch.tensor([2.0, 8.0, 1.0]), [1.0, 6.0, 10.0]).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="2 dimensions"):
        column_absmax(torch.ones(3))
