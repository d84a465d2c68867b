"""One record protocol (`qlearn.formats.Record`), checked on every format of the registry.

Each format quantizes the same seeded bf16 weight, shaped like the embedded model's layers (rows of 576:
not a multiple of 128, so RTN's last block is short and Q4_K falls back to flattened super-blocks), with
calibration inputs for GPTQ / AWQ. Every record must give integer codes in the weight's shape, within
its format's code range; dequantize to the weight's shape and dtype (or the dtype asked), close to the
weight; and store the bytes its layout says, bits_per_param being 8 * nbytes / weights.
"""

import math

import pytest
import torch

import qlearn as ql
from qlearn.affine import code_range
from qlearn.formats import FORMATS, Record, Unquantized
from qlearn.kernels.fused import Int4Weights
from qlearn.methods import AWQQuantized, GGUFQuantized, GroupQuantized, HQQQuantized

ROWS, COLS = 64, 576
N = ROWS * COLS


def _weight_and_inputs():
    g = torch.Generator().manual_seed(20)
    w = torch.randn(ROWS, COLS, generator=g) * 0.02
    w[torch.randint(0, ROWS, (8,), generator=g), torch.randint(0, COLS, (8,), generator=g)] = 0.2   # outliers
    x = torch.randn(256, COLS, generator=g) * (1 + 9 * (torch.rand(COLS, generator=g) > 0.98))
    return w.to(torch.bfloat16), x


W, X = _weight_and_inputs()

# Stored bits per weight of each format on this (64, 576) weight, from its layout (not from the code):
# codes at their width + one scale per block (+ a zero point per block).
BLOCKS_128 = 5                                                        # 576 = 4 x 128 + 64
EXPECTED_BITS = {
    "absmax": 8 + 32 / N,                                             # one float32 scale for the tensor
    "zeropoint": 8 + (32 + 8) / N,                                    # + one 8-bit zero point
    "fp32": 32.0, "bf16": 16.0, "fp16": 16.0,
    "int8": 8 + 32 / COLS,                                            # a float32 absmax per row
    "nf4": 4 + 32 / 64, "fp4": 4 + 32 / 64,
    "nf4+dq": (N // 2 + N // 64 + 4 * math.ceil(N / 64 / 256) + 4) * 8 / N,   # uint8 absmax, nested, offset
    "fp4+dq": (N // 2 + N // 64 + 4 * math.ceil(N / 64 / 256) + 4) * 8 / N,
    "int4": 4 + 32 / 64, "int4-zp": 4 + 32 / 64 + 32 / 64,            # float32 minimum per block
    "blockwise8": 8 + 32 * math.ceil(N / 4096) / N,
    "rtn": 4 + 32 * BLOCKS_128 / COLS, "gptq": 4 + 32 * BLOCKS_128 / COLS,
    "rtn-asym": 4 + (32 + 4) * BLOCKS_128 / COLS, "gptq-asym": 4 + (32 + 4) * BLOCKS_128 / COLS,
    "awq": 4 + 32 * BLOCKS_128 / COLS + 16 / ROWS,                    # + a float16 scale per input channel
    "hqq": 4 + (16 + 16) * BLOCKS_128 / COLS,                         # float16 scale and zero point
    "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K": 4.5,
    "int4-tinygemm": 4 + 2 * 16 / 64,                                 # bf16 scale and zero per 64
    "mxfp4": 4 + 8 / 32,                                              # an E8M0 exponent per 32
    "nvfp4": 4 + 8 / 16 + 32 / N,                                     # an E4M3 scale per 16, a float32 per tensor
    "fp8-e4m3": 8 + 32 * BLOCKS_128 / N, "fp8-e5m2": 8 + 32 * BLOCKS_128 / N,   # one float32 per 128x128 tile
    "rtn-hadamard": 4 + 32 * BLOCKS_128 / COLS + 1 / ROWS,            # + one sign bit per input channel
}
# The worst error a format may make on this weight (a wrong scale or code order gives < 0 dB): SQNR in dB at least
MIN_SQNR = {4: 8.0, 8: 30.0, 16: 45.0, 32: 200.0}   # GPTQ trades weight error for output error: 11 dB
MIN_SQNR_OF = {"fp8-e5m2": 22.0}   # 2 mantissa bits: a relative step of 1/8 gives about 25 dB


@pytest.fixture(scope="module")
def records():
    return {name: f.quantize(W, x=X) for name, f in FORMATS.items()}


def test_the_expected_table_covers_the_registry():
    assert set(EXPECTED_BITS) == set(FORMATS)


def test_every_record_class_is_reached(records):
    classes = {type(r) for r in records.values()}
    assert {ql.Quantized4bit, ql.Blockwise8bit, ql.AbsmaxQuantized, ql.ZeroPointQuantized, ql.quantize.Int8Vectorwise,
            Unquantized, GroupQuantized, HQQQuantized, AWQQuantized, GGUFQuantized, Int4Weights} <= classes


@pytest.mark.parametrize("name", list(FORMATS))
def test_record_protocol(records, name):
    f, rec = FORMATS[name], records[name]
    assert isinstance(rec, Record)
    codes = rec.codes
    assert codes.shape == W.shape and not codes.dtype.is_floating_point and codes.dtype != torch.bool
    if f.levels in ("int", "nf4", "fp4", "dynamic", "e2m1"):
        lo, hi = code_range(f.bits, f.zero_point_domain) if f.levels == "int" else (0, 2 ** f.bits - 1)
        assert lo <= int(codes.min()) and int(codes.max()) <= hi, (int(codes.min()), int(codes.max()))
    back = rec.dequantize()
    assert back.shape == W.shape and back.dtype == W.dtype
    back32 = rec.dequantize(torch.float32)
    assert back32.shape == W.shape and back32.dtype == torch.float32
    assert ql.error_stats(W.float(), back32)["sqnr_db"] > MIN_SQNR_OF.get(name, MIN_SQNR[f.bits])
    assert isinstance(rec.nbytes, int) and rec.nbytes == EXPECTED_BITS[name] * N / 8
    assert rec.bits_per_param == pytest.approx(EXPECTED_BITS[name], rel=1e-12)
    assert rec.bits_per_param == 8 * rec.nbytes / N


def test_unquantized_codes_are_the_bit_patterns():
    rec = FORMATS["bf16"].quantize(W)
    assert rec.codes.dtype == torch.int16 and torch.equal(rec.codes, W.view(torch.int16))
    assert rec.values.data_ptr() == W.data_ptr()                      # a bf16 weight is not copied
    assert FORMATS["fp32"].quantize(W).codes.dtype == torch.int32


def test_scales_are_stored_in_the_registrys_dtype_and_layout(records):
    """Scales: (blocks,) over the flattened tensor for bitsandbytes' and qlearn.intquant's blockwise records,
    (rows, blocks a row) for the methods and the kernel (docs/glossary.md)."""
    flat = {"nf4": records["nf4"].absmax, "nf4+dq": records["nf4+dq"].absmax, "int4": records["int4"].scale,
            "int4-zp": records["int4-zp"].scale, "blockwise8": records["blockwise8"].absmax}
    for name, scale in flat.items():
        assert scale.shape == (math.ceil(N / FORMATS[name].blocksize),) and scale.dtype == FORMATS[name].scale_dtype
    rows = {"rtn": records["rtn"].scale, "gptq": records["gptq"].scale, "hqq": records["hqq"].scale,
            "int4-tinygemm": records["int4-tinygemm"].scale}
    for name, scale in rows.items():
        assert scale.shape == (ROWS, math.ceil(COLS / FORMATS[name].blocksize)), name
        assert scale.dtype == FORMATS[name].scale_dtype, name
    assert records["int8"].row_absmax.shape == (ROWS,) and records["int8"].row_absmax.dtype == torch.float32


def test_zero_point_domains_match_the_registry(records):
    for name in ("absmax", "zeropoint", "int4", "int4-zp", "rtn", "rtn-asym", "gptq", "gptq-asym", "hqq"):
        assert records[name].zero_point_domain == FORMATS[name].zero_point_domain, name
    assert records["int4-zp"].zero_point is None and records["int4-zp"].minimum.shape == (N // 64,)
