"""Float formats at the bit level: sign, exponent and mantissa fields, and every value a small format holds.

A binary float with E exponent bits and M mantissa bits stores ``s | e | m`` and means

    normal    (e > 0):  (-1)^s * 2^(e - bias) * (1 + m / 2^M),    bias = 2^(E-1) - 1
    subnormal (e = 0):  (-1)^s * 2^(1 - bias) * (m / 2^M)         (0 when m = 0, with a sign)

The formats differ in what the all-ones exponent means: IEEE 754 (fp32, fp16, bf16) and fp8 E5M2
make it inf (m = 0) or NaN; fp8 E4M3 ("fn": finite, NaN only) keeps it for numbers except
``s.1111.111`` = NaN, so it reaches 448; OCP MX E2M1 (FP4) has no inf or NaN at all.
bitsandbytes' FP4 is not a field format: its 4-bit code indexes a table (``codebooks.FP4``), bit 3 the
sign; its magnitudes x 12 are {0, 0.0625, 2, 3, 4, 6, 8, 12}, i.e. twice E2M1's {0, 0.5, 1, ..., 6}
except the smallest nonzero (0.0625 where E2M1 doubled gives 1), and its exponent codes run the other
way (0b01x is the largest, 0b11x the smallest normal). Imports torch only; values are float64 (exact
for every format here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import codebooks

__all__ = ["FloatFormat", "FloatFields", "FLOAT_FORMATS", "decode", "encode", "fields", "representable", "summary"]


@dataclass(frozen=True)
class FloatFormat:
    """A binary float format. ``specials``: "ieee" (all-ones exponent = inf / NaN), "fn" (only
    s.1..1.1..1 is NaN, no inf: fp8 E4M3), "none" (every pattern a number: OCP E2M1), "table"
    (bitsandbytes FP4: the code indexes ``codebooks.FP4``). ``torch_dtype``: torch's own dtype or None."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    specials: str
    torch_dtype: torch.dtype | None = None

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1


FLOAT_FORMATS = {
    "fp32": FloatFormat("fp32", 8, 23, "ieee", torch.float32),
    "fp16": FloatFormat("fp16", 5, 10, "ieee", torch.float16),
    "bf16": FloatFormat("bf16", 8, 7, "ieee", torch.bfloat16),
    "fp8_e4m3": FloatFormat("fp8_e4m3", 4, 3, "fn", torch.float8_e4m3fn),
    "fp8_e5m2": FloatFormat("fp8_e5m2", 5, 2, "ieee", torch.float8_e5m2),
    "e2m1": FloatFormat("e2m1", 2, 1, "none"),           # OCP MX FP4
    "bnb_fp4": FloatFormat("bnb_fp4", 2, 1, "table"),    # bitsandbytes "fp4": a table, max 1.0
}
_INT_VIEW = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


@dataclass(frozen=True)
class FloatFields:
    """One value's bit fields in one format: ``bits`` the whole pattern as an int, ``sign`` /
    ``exponent`` / ``mantissa`` the fields as ints, ``value`` what the pattern means (float),
    ``kind`` one of "zero", "subnormal", "normal", "inf", "nan"."""

    format: str
    bits: int
    sign: int
    exponent: int
    mantissa: int
    value: float
    kind: str

    @property
    def bit_string(self) -> str:
        """The pattern as "s|eeee|mmm", e.g. 1.0 in fp8_e4m3 -> "0|0111|000"."""
        f = FLOAT_FORMATS[self.format]
        return (f"{self.sign}|{self.exponent:0{f.exponent_bits}b}|{self.mantissa:0{f.mantissa_bits}b}")

    @property
    def formula(self) -> str:
        """How the fields make the value, e.g. fp8_e4m3 1.25: "+2^(7-7) x (1 + 2/8) = 1.25"."""
        f = FLOAT_FORMATS[self.format]
        sign = "-" if self.sign else "+"
        if self.kind in ("nan", "inf"):
            return f"exponent all ones -> {self.value}"
        if f.specials == "table":
            return f"{sign}table[{self.exponent << 1 | self.mantissa}] = {self.value:.8g} (bitsandbytes FP4, max 1)"
        m = f"{self.mantissa}/{1 << f.mantissa_bits}"
        if self.exponent == 0:
            return f"{sign}2^(1-{f.bias}) x (0 + {m}) = {self.value:.8g}"
        return f"{sign}2^({self.exponent}-{f.bias}) x (1 + {m}) = {self.value:.8g}"


def _format(fmt) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    if fmt not in FLOAT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FLOAT_FORMATS)} (or a FloatFormat); got {fmt!r}")
    return FLOAT_FORMATS[fmt]


def _split(bits: torch.Tensor, f: FloatFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = bits.long() & ((1 << f.bits) - 1)
    sign = (b >> (f.bits - 1)) & 1
    return sign, (b >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1), b & ((1 << f.mantissa_bits) - 1)


def decode(bits: torch.Tensor, fmt) -> torch.Tensor:
    """What each bit pattern means: integer tensor of patterns (any shape; only the low ``bits`` bits
    are read) -> float64 tensor of the same shape, NaN / +-inf / -0.0 included.
    Worked number: fp8_e4m3 0b0_0111_000 = 2^(7-7) * 1 = 1.0; 0b0_1111_110 = 2^8 * 1.75 = 448.

    >>> decode(torch.tensor([0b00111000, 0b01111110]), "fp8_e4m3").tolist()
    [1.0, 448.0]
    """
    f = _format(fmt)
    if not isinstance(bits, torch.Tensor) or bits.dtype.is_floating_point or bits.dtype == torch.bool:
        raise TypeError(f"bits must be an integer tensor of bit patterns; got {type(bits).__name__} "
                        f"{getattr(bits, 'dtype', '')}")
    s, e, m = _split(bits, f)
    if f.specials == "table":
        mag = codebooks.FP4.double().abs()[(e << f.mantissa_bits) | m]   # the low 3 bits index the table
        return torch.where(s == 1, -mag, mag)
    frac = m.double() / (1 << f.mantissa_bits)
    mag = torch.where(e > 0, torch.ldexp(1 + frac, e - f.bias), torch.ldexp(frac, torch.full_like(e, 1 - f.bias)))
    top = (1 << f.exponent_bits) - 1
    if f.specials == "ieee":
        mag = torch.where(e == top, torch.where(m == 0, torch.inf, torch.nan), mag)
    elif f.specials == "fn":
        mag = torch.where((e == top) & (m == (1 << f.mantissa_bits) - 1), torch.nan, mag)
    return torch.where(s == 1, -mag, mag)


def encode(x: torch.Tensor, fmt) -> torch.Tensor:
    """The bit pattern (int64) of each value of ``x`` rounded into ``fmt``: torch's own cast where
    torch has the dtype (round to nearest even; torch 2.x saturates fp8 E4M3 at +-448, inf included,
    while E5M2 overflows to inf), otherwise the nearest representable value (E2M1 and bitsandbytes FP4 saturate at their
    largest magnitude; a tie goes to the pattern with mantissa bit 0).
    Worked number: 0.3 in bf16 -> 0x3e9a (0.30078125).

    >>> hex(int(encode(torch.tensor([0.3]), "bf16")[0]))
    '0x3e9a'
    """
    f = _format(fmt)
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor; got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if f.torch_dtype is not None:
        raw = x.to(torch.float32).to(f.torch_dtype).view(_INT_VIEW[f.bits])
        return raw.long() & ((1 << f.bits) - 1)
    patterns = torch.arange(1 << f.bits)
    values = decode(patterns, f)                                         # (16,)
    dist = (x.double().reshape(-1, 1) - values).abs()                    # (n, 16)
    nearest = dist == dist.min(1, keepdim=True).values                  # (n, 16): ties are several
    best = patterns[(2 * nearest.long() + (nearest & (patterns & 1 == 0)).long()).argmax(1)]   # tie -> mantissa 0
    best = torch.where(x.reshape(-1) == 0, torch.where(torch.signbit(x.reshape(-1)), 1 << (f.bits - 1), 0), best)
    return best.reshape(x.shape)


def fields(value: float, fmt) -> FloatFields:
    """``value`` rounded into ``fmt`` and split into its fields.
    Worked number: -0.3 in fp16 -> sign 1, exponent 13 (2^(13-15) = 0.25), mantissa 205 (1 + 205/1024),
    value -0.25 * 1.2001953125 = -0.300048828125.

    >>> fields(-0.3, "fp16").bit_string, fields(-0.3, "fp16").value
    ('1|01101|0011001101', -0.300048828125)
    """
    f = _format(fmt)
    bits = encode(torch.tensor([float(value)], dtype=torch.float64), f)
    s, e, m = (int(t) for t in _split(bits, f))
    v = float(decode(bits, f)[0])
    if v != v:
        kind = "nan"
    elif abs(v) == float("inf"):
        kind = "inf"
    elif v == 0:
        kind = "zero"
    else:
        kind = "subnormal" if e == 0 and f.specials != "table" else "normal"
    return FloatFields(f.name, int(bits[0]), s, e, m, v, kind)


def representable(fmt, finite: bool = True) -> torch.Tensor:
    """Every value a format of at most 16 bits holds: float64, sorted, each once (+0 and -0 as one 0);
    ``finite`` drops inf and NaN. fp8 E4M3: 253 values, max 448; E2M1: 15, max 6.

    >>> representable("e2m1")[7:].tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    f = _format(fmt)
    if f.bits > 16:
        raise ValueError(f"fmt {f.name!r} has {f.bits} bits; representable() enumerates formats of at most 16")
    v = decode(torch.arange(1 << f.bits), f)
    v = v[torch.isfinite(v)] if finite else v[~torch.isnan(v)]
    return torch.unique(v + 0.0)   # + 0.0 turns -0.0 into 0.0


def summary(fmt) -> dict:
    """Largest finite value, smallest normal, smallest subnormal, machine epsilon (the gap above 1)
    and the count of distinct finite values (None for fp32: 2^32 patterns are not enumerated).
    bf16: max 3.39e38 (as fp32), eps 2^-7 = 0.0078125; fp16: max 65504, eps 2^-10.

    >>> summary("fp16")["max"], summary("bf16")["eps"]
    (65504.0, 0.0078125)
    """
    f = _format(fmt)
    if f.specials == "table":
        v = representable(f)
        pos = v[v > 0]
        return {"max": float(pos.max()), "smallest_normal": float(pos[1]), "smallest_subnormal": float(pos[0]),
                "eps": float("nan"), "distinct_finite": v.numel()}
    top_e = (1 << f.exponent_bits) - 1 - (f.specials == "ieee")
    top_m = (1 << f.mantissa_bits) - 1 - (f.specials == "fn" and top_e == (1 << f.exponent_bits) - 1)
    largest = decode(torch.tensor([(top_e << f.mantissa_bits) | top_m]), f)
    return {"max": float(largest[0]), "smallest_normal": 2.0 ** (1 - f.bias),
            "smallest_subnormal": 2.0 ** (1 - f.bias - f.mantissa_bits), "eps": 2.0 ** -f.mantissa_bits,
            "distinct_finite": representable(f).numel() if f.bits <= 16 else None}
