"""Properties, granularity and input errors of the math layer (no bitsandbytes here)."""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qlearn as ql

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


def _largest_half_gap(quant_type):
    code = ql.codebooks.get_codebook(quant_type).sort().values
    return float((code[1:] - code[:-1]).max()) / 2


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=300), quant_type=st.sampled_from(["nf4", "fp4"]),
       blocksize=st.sampled_from([32, 64, 128]), double_quant=st.booleans())
def test_4bit_round_trip_error_is_bounded_per_block(values, quant_type, blocksize, double_quant):
    x = torch.tensor(values, dtype=torch.float32)
    q = ql.quantize_4bit(x, quant_type, blocksize, double_quant=double_quant)
    err = (q.dequantize() - x).abs()
    absmax = q.block_absmax()                                     # (blocks,) as used to dequantize
    exact = ql.quantize_4bit(x, quant_type, blocksize).absmax     # the true block absmax
    per_elem = torch.arange(x.numel()) // blocksize
    # half the largest code gap times the block absmax, plus what double quant moved the scale by
    bound = _largest_half_gap(quant_type) * exact[per_elem] + (absmax - exact).abs()[per_elem]
    assert bool((err <= bound * (1 + 1e-5) + 1e-30).all())


@settings(max_examples=40, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=200), quant_type=st.sampled_from(["nf4", "fp4"]),
       double_quant=st.booleans())
def test_same_input_gives_the_same_bytes(values, quant_type, double_quant):
    x = torch.tensor(values)
    a = ql.quantize_4bit(x, quant_type, 32, double_quant)
    b = ql.quantize_4bit(x.clone(), quant_type, 32, double_quant)
    assert torch.equal(a.packed, b.packed) and torch.equal(a.absmax, b.absmax)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite, min_size=2, max_size=200), bits=st.integers(2, 8),
       blocksize=st.sampled_from([None, 4, 16]))
def test_absmax_and_zeropoint_error_within_half_a_step(values, bits, blocksize):
    x = torch.tensor(values)
    a = ql.absmax_quantize(x, bits=bits, blocksize=blocksize)
    z = ql.zeropoint_quantize(x, bits=bits, blocksize=blocksize)
    assert int(a.codes.abs().max()) <= 2 ** (bits - 1) - 1 and int(z.codes.max()) <= 2 ** bits - 1
    for qt in (a, z):
        step = qt.scale if blocksize is None else qt.scale.repeat_interleave(blocksize)[: x.numel()]
        err = (qt.dequantize() - x).abs()
        assert bool((err <= step * 0.5 * (1 + 1e-4) + 1e-3 * step + 1e-30).all())


def test_granularities_give_the_expected_scales():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.25], [10.0, 0.0, -1.0, 3.0]])
    assert ql.absmax_quantize(x).scale.tolist() == pytest.approx([10 / 127])
    assert ql.absmax_quantize(x, axis=0).scale.tolist() == pytest.approx([2 / 127, 10 / 127])
    assert ql.absmax_quantize(x, axis=1).scale.tolist() == pytest.approx([10 / 127, 2 / 127, 1 / 127, 3 / 127])
    assert ql.absmax_quantize(x, blocksize=3).scale.tolist() == pytest.approx([2 / 127, 10 / 127, 3 / 127])
    for axis in (0, 1, -1):
        assert ql.absmax_quantize(x, axis=axis).dequantize().shape == x.shape
    z = ql.zeropoint_quantize(torch.tensor([0.0, 1.0, 2.0, 3.0]), bits=2)
    assert z.codes.tolist() == [0, 1, 2, 3] and z.dequantize().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_zeropoint_uses_all_levels_on_a_shifted_tensor_where_absmax_wastes_half():
    x = torch.linspace(0.0, 1.0, 1000)           # a post-ReLU-like, all positive tensor
    a = ql.absmax_quantize(x, bits=4)
    z = ql.zeropoint_quantize(x, bits=4)
    assert a.codes.unique().numel() == 8              # only 0..7 of -7..7 are used
    assert z.codes.unique().numel() == 16
    assert ql.error_stats(x, z.dequantize())["sqnr_db"] > ql.error_stats(x, a.dequantize())["sqnr_db"] + 5


def test_float_zero_point_reproduces_a_q4_1_style_block():
    g = torch.Generator().manual_seed(0)
    d, m = 0.013, -0.07                            # GGUF Q4_1: x = d * q + m, q in 0..15
    q = torch.randint(0, 16, (32,), generator=g).float()
    q[0], q[1] = 0, 15
    x = d * q + m
    zq = ql.zeropoint_quantize(x, bits=4, blocksize=32, zero_point_domain="float")
    assert torch.equal(zq.codes.float(), q)
    assert float((zq.dequantize() - x).abs().max()) < 1e-6


def test_packed_layout_first_element_high_nibble():
    q = ql.quantize_4bit(torch.tensor([-1.0, 1.0, 0.0]), "nf4", 32)
    assert q.codes.tolist() == [0, 15, 7]
    assert q.packed.tolist() == [0x0F, 0x77]       # odd count: padded with the code of 0.0 (7)
    assert q.nbytes_by_part == {"codes": 2, "absmax": 4, "nested": 0} and q.nbytes == 6


def test_bits_per_param_measured():
    x = torch.randn(64 * 256 * 4)
    assert ql.quantize_4bit(x).bits_per_param == pytest.approx(4.5)
    # 4 + 8/64 + 32/(64*256), plus the one float32 offset spread over the tensor
    assert ql.quantize_4bit(x, double_quant=True).bits_per_param == 4.126953125 + 32 / x.numel()


def test_every_record_speaks_one_protocol():
    """.codes in the input's shape, .dequantize() back to its shape and dtype, .nbytes (int) and
    .bits_per_param = 8 * nbytes / elements, with the number each format's layout gives."""
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(14), dtype=torch.float32).to(torch.bfloat16)
    expected_bits = {   # (6 * 128 = 768 elements)
        "nf4": 4 + 32 / 64, "nf4+dq": (384 + 12 + 4 + 4) * 8 / 768, "8-bit blockwise": 8 + 32 / 256,
        "absmax int4 per row": 4 + 32 / 128, "zero-point int4 blocks of 32": 4 + 32 / 32 + 4 / 32,
        "zero-point float blocks of 32": 4 + 32 / 32 + 32 / 32, "int8 rows": 8 + 32 / 128,
    }
    records = {
        "nf4": ql.quantize_4bit(x), "nf4+dq": ql.quantize_4bit(x, double_quant=True),
        "8-bit blockwise": ql.quantize_blockwise_8bit(x, blocksize=256),
        "absmax int4 per row": ql.absmax_quantize(x, bits=4, axis=0),
        "zero-point int4 blocks of 32": ql.zeropoint_quantize(x, bits=4, blocksize=32),
        "zero-point float blocks of 32": ql.zeropoint_quantize(x, bits=4, blocksize=32, zero_point_domain="float"),
        "int8 rows": ql.int8_vectorwise(x),
    }
    for name, record in records.items():
        assert record.codes.shape == x.shape, name
        assert not record.codes.dtype.is_floating_point, name
        back = record.dequantize()
        assert back.shape == x.shape and back.dtype == x.dtype, name
        assert record.dequantize(torch.float32).dtype == torch.float32, name
        assert isinstance(record.nbytes, int), name
        assert record.bits_per_param == pytest.approx(expected_bits[name]), name


def test_device_and_dtype_are_kept():
    x = torch.randn(3, 70, dtype=torch.bfloat16)
    for out in (ql.quantize_4bit(x).dequantize(), ql.quantize_blockwise_8bit(x).dequantize(),
                ql.absmax_quantize(x, axis=0).dequantize(), ql.zeropoint_quantize(x, blocksize=32).dequantize()):
        assert out.dtype == torch.bfloat16 and out.device == x.device and out.shape == x.shape
    assert ql.quantize_4bit(x).dequantize(torch.float32).dtype == torch.float32


BAD_INPUTS = [
    (lambda: ql.quantize_4bit(torch.tensor([1.0, float("nan")])), ValueError, "NaN or Inf"),
    (lambda: ql.quantize_4bit(torch.tensor([1.0, float("inf")])), ValueError, "NaN or Inf"),
    (lambda: ql.absmax_quantize(torch.tensor([float("-inf"), 1.0])), ValueError, "NaN or Inf"),
    (lambda: ql.zeropoint_quantize(torch.tensor([float("nan"), 1.0])), ValueError, "NaN or Inf"),
    (lambda: ql.int8_vectorwise(torch.tensor([[float("nan"), 1.0]])), ValueError, "NaN or Inf"),
    (lambda: ql.quantize_blockwise_8bit(torch.tensor([float("nan")] * 3)), ValueError, "NaN or Inf"),
    (lambda: ql.quantize_4bit(torch.empty(0)), ValueError, "x is empty"),
    (lambda: ql.absmax_quantize(torch.empty(3, 0)), ValueError, "x is empty"),
    (lambda: ql.quantize_4bit(torch.arange(10)), TypeError, "dtype torch.int64"),
    (lambda: ql.quantize_4bit(torch.ones(4, dtype=torch.bool)), TypeError, "dtype torch.bool"),
    (lambda: ql.zeropoint_quantize(torch.ones(4, dtype=torch.int8)), TypeError, "allowed: float32"),
    (lambda: ql.quantize_4bit([1.0, 2.0]), TypeError, "must be a torch.Tensor, got list"),
    (lambda: ql.quantize_4bit(torch.ones(8), blocksize=48), ValueError, "blocksize must be one of 32, 64"),
    (lambda: ql.quantize_4bit(torch.ones(8), blocksize=8192), ValueError, "got 8192"),
    (lambda: ql.quantize_blockwise_8bit(torch.ones(8), blocksize=100), ValueError, "got 100"),
    (lambda: ql.absmax_quantize(torch.ones(8), blocksize=0), ValueError, "blocksize must be an int >= 1; got 0"),
    (lambda: ql.absmax_quantize(torch.ones(8), bits=1), ValueError, "bits must be an integer in 2..8; got 1"),
    (lambda: ql.zeropoint_quantize(torch.ones(8), bits=9), ValueError, "got 9"),
    (lambda: ql.absmax_quantize(torch.ones(8), bits=4.0), ValueError, "got 4.0"),
    (lambda: ql.quantize_4bit(torch.ones(8), quant_type="int4"), ValueError, "quant_type must be one of 'nf4', 'fp4'"),
    (lambda: ql.quantize_4bit(torch.ones(8), dq_rule="fast"), ValueError, "dq_rule must be one of"),
    (lambda: ql.quantize_blockwise_8bit(torch.ones(8), rule="x"), ValueError, "rule must be one of"),
    (lambda: ql.zeropoint_quantize(torch.ones(8), zero_point_domain="half"), ValueError, "zero_point_domain"),
    (lambda: ql.absmax_quantize(torch.ones(2, 3), axis=2), ValueError, "axis must be an integer in -2..1"),
    (lambda: ql.zeropoint_quantize(torch.ones(2, 3), axis=-3), ValueError, "got -3"),
    (lambda: ql.absmax_quantize(torch.ones(4), axis=0, blocksize=2), ValueError, "not both"),
    (lambda: ql.int8_vectorwise(torch.ones(4)), ValueError, "at least 2 dimensions"),
    (lambda: ql.int8_vectorwise(torch.ones(2, 2), threshold=-1), ValueError, "threshold must be a number >= 0"),
    (lambda: ql.error_stats(torch.ones(2), torch.ones(3)), ValueError, "same shape"),
    (lambda: ql.codebooks.int_grid(9), ValueError, "bits must be an integer in 2..8"),
    (lambda: ql.codebooks.nf4_from_normal(1.5), ValueError, "offset must be in (0.5, 1)"),
]


@pytest.mark.parametrize("call,exc,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def test_numpy_input_is_accepted():
    import numpy as np
    q = ql.quantize_4bit(np.linspace(-1, 1, 64, dtype=np.float32))
    assert q.codes[0] == 0 and q.codes[-1] == 15


def test_error_stats_worked_number():
    s = ql.error_stats(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.0]))
    assert s["mse"] == pytest.approx(0.005) and s["max_abs"] == pytest.approx(0.1)
    assert s["sqnr_db"] == pytest.approx(23.0103, abs=1e-3) and s["rel_err"] == pytest.approx(0.0707107, abs=1e-6)
    assert ql.error_stats(torch.ones(3), torch.ones(3))["sqnr_db"] == float("inf")


def test_import_qlearn_stays_light():
    code = ("import sys, qlearn; heavy = [m for m in ('transformers', 'matplotlib', 'ipywidgets', 'bitsandbytes',"
            " 'accelerate', 'pandas') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_math_docstring_examples():
    import doctest

    from qlearn import _checks, codebooks, cuda_rules, intquant, metrics, quantize
    for module in (codebooks, quantize, intquant, metrics, _checks, ql.reference, cuda_rules):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_callers_thread_count_is_unchanged(threads):
    """The quantizers run on one CPU thread inside (speed under load) and give the setting back, also on error."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(4096, generator=torch.Generator().manual_seed(12))
        ql.quantize_4bit(x, double_quant=True)
        ql.quantize_blockwise_8bit(x)
        assert torch.get_num_threads() == threads
        with pytest.raises(ValueError, match="NaN or Inf"):
            ql.quantize_4bit(torch.tensor([1.0, float("nan")] * 64))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_nearest_code_by_cells_equals_bucketize():
    """The cell look-up gives the rank torch.bucketize gives, on every midpoint, its float neighbours,
    the cell edges and random values (the plain rule is a binary search; docs/formats.md)."""
    from qlearn.quantize import CELLS, _nearest_codes, _table
    for quant_type in ("nf4", "fp4"):
        _, mids, order = _table(quant_type, "cpu")
        edges = torch.arange(CELLS + 1) / (CELLS / 2) - 1
        near = [torch.nextafter(t, t + d).clamp(-1, 1) for t in (mids, edges) for d in (1, -1)]
        uniform = torch.rand(100_000, generator=torch.Generator().manual_seed(13)) * 2 - 1
        probes = torch.cat([mids, edges, *near, uniform])
        rank = torch.bucketize(probes, mids)
        assert torch.equal(_nearest_codes(probes, quant_type), order[rank].to(torch.uint8))
