"""qlearn.floats against torch's own float casts, bit for bit, and the published value sets."""

import pytest
import torch

import qlearn as ql
from qlearn import floats

TORCH_SMALL = {"fp8_e4m3": (torch.float8_e4m3fn, torch.uint8), "fp8_e5m2": (torch.float8_e5m2, torch.uint8),
               "fp16": (torch.float16, torch.int16), "bf16": (torch.bfloat16, torch.int16)}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where NaN, and the same sign of zero."""
    return (torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[~a.isnan()], b[~b.isnan()])
            and torch.equal(torch.signbit(a[~a.isnan()]), torch.signbit(b[~b.isnan()])))


@pytest.mark.parametrize("name", sorted(TORCH_SMALL))
def test_decode_every_pattern_equals_torchs_cast(name):
    dtype, view = TORCH_SMALL[name]
    n = 1 << floats.FLOAT_FORMATS[name].bits
    patterns = torch.arange(n)
    theirs = patterns.to(torch.int32).to(view).view(dtype).double()   # int16 wraps: the same 16 bits
    assert _same(floats.decode(patterns, name), theirs)


def test_decode_fp32_random_patterns_and_specials():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2 ** 31), 2 ** 31, (50_000,), generator=g, dtype=torch.int64)
    special = torch.tensor([0, 1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x7F7FFFFF, 0x7F800000, 0x7FC00000,
                            -0x80000000, -0x00800000])
    bits = torch.cat([bits, special])
    theirs = bits.to(torch.int32).view(torch.float32).double()
    assert _same(floats.decode(bits & 0xFFFFFFFF, "fp32"), theirs)


@pytest.mark.parametrize("name", sorted(TORCH_SMALL) + ["fp32"])
def test_encode_is_torchs_cast(name):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(5000, generator=g) * 10 ** torch.randint(-6, 5, (5000,), generator=g),
                   torch.tensor([0.0, -0.0, 1.0, 3.5, 448.0, 500.0, 1e-9, float("inf")])])
    bits = floats.encode(x, name)
    dtype = floats.FLOAT_FORMATS[name].torch_dtype
    assert _same(floats.decode(bits, name), x.to(dtype).double())


def test_encode_round_trips_every_fp8_pattern():
    for name in ("fp8_e4m3", "fp8_e5m2"):
        patterns = torch.arange(256)
        v = floats.decode(patterns, name)
        keep = ~v.isnan()
        assert torch.equal(floats.encode(v[keep], name), patterns[keep])


def test_e2m1_is_the_ocp_value_set_and_bnb_fp4_is_not():
    assert floats.representable("e2m1").tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    bnb = floats.representable("bnb_fp4") * 12
    ocp_doubled = floats.representable("e2m1") * 2
    differ = sorted(set(bnb.round(decimals=5).tolist()) ^ set(ocp_doubled.tolist()))
    assert differ == [-1.0, -0.0625, 0.0625, 1.0]   # only the smallest nonzero magnitude differs
    # bitsandbytes' FP4 decodes exactly to its code book, in bit-pattern order
    assert torch.equal(floats.decode(torch.arange(16), "bnb_fp4").float().abs(), ql.codebooks.FP4.abs())


def test_e2m1_rounding_and_saturation():
    x = torch.tensor([0.25, 0.75, 1.25, 2.5, 5.0, 100.0, -100.0, -0.0, 0.3])
    got = floats.decode(floats.encode(x, "e2m1"), "e2m1")
    assert got.tolist() == [0.0, 1.0, 1.0, 2.0, 4.0, 6.0, -6.0, -0.0, 0.5]   # ties to mantissa bit 0
    assert torch.signbit(got[7])


@pytest.mark.parametrize("name", sorted(TORCH_SMALL) + ["fp32"])
def test_summary_matches_torch_finfo(name):
    info = torch.finfo(floats.FLOAT_FORMATS[name].torch_dtype)
    s = floats.summary(name)
    assert (s["max"], s["smallest_normal"], s["eps"]) == (info.max, info.smallest_normal, info.eps)
    if s["distinct_finite"] is not None:
        v = floats.decode(torch.arange(1 << floats.FLOAT_FORMATS[name].bits), name)
        assert s["distinct_finite"] == torch.unique(v[torch.isfinite(v)] + 0.0).numel()
        assert s["smallest_subnormal"] == float(v[v > 0].min())


def test_fields_worked_numbers():
    f = floats.fields(1.0, "fp8_e4m3")
    assert (f.bit_string, f.value, f.kind) == ("0|0111|000", 1.0, "normal")
    assert floats.fields(448.0, "fp8_e4m3").bit_string == "0|1111|110"
    assert floats.fields(1e-3, "fp8_e4m3").kind == "subnormal"
    assert floats.fields(float("inf"), "fp16").kind == "inf"
    assert floats.fields(-0.0, "bf16").bits == 0x8000
    assert floats.fields(0.1, "bnb_fp4").value == pytest.approx(2 / 12)


BAD = [
    (lambda: floats.decode(torch.tensor([1.0]), "fp16"), TypeError, "integer tensor"),
    (lambda: floats.decode(torch.tensor([1]), "fp6"), ValueError, "fp6"),
    (lambda: floats.encode([1.0], "fp16"), TypeError, "floating-point tensor"),
    (lambda: floats.representable("fp32"), ValueError, "32 bits"),
]


@pytest.mark.parametrize("call,error,text", BAD)
def test_bad_inputs(call, error, text):
    with pytest.raises(error, match=text):
        call()


def test_float_bits_figure_draws_every_bit_and_value(tmp_path):
    from qlearn.plots import to_png
    from qlearn.plots.floats import float_bits_figure

    names = ["fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "e2m1", "bnb_fp4"]
    rows = [floats.fields(0.3, n) for n in names]
    widths = {n: (floats.FLOAT_FORMATS[n].exponent_bits, floats.FLOAT_FORMATS[n].mantissa_bits) for n in names}
    e4m3 = floats.representable("fp8_e4m3")
    fig = float_bits_figure(0.3, rows, widths, {"E4M3": e4m3}, {"E2M1 / 6": floats.representable("e2m1") / 6,
                                                                 "bnb FP4": floats.representable("bnb_fp4")})
    top, b, c = fig.axes
    assert len(top.patches) == sum(floats.FLOAT_FORMATS[n].bits for n in names)      # one box per bit
    assert {t.get_text() for t in top.texts} >= {r.formula for r in rows}
    assert len(b.collections[0].get_segments()) == int((e4m3 > 0).sum())         # one tick per positive value
    from matplotlib.collections import PathCollection
    assert [len(col.get_offsets()) for col in c.collections if isinstance(col, PathCollection)] == [15, 15]
    png = to_png(fig)
    (tmp_path / "floats.png").write_bytes(png)
    assert png[:4] == b"\x89PNG"
