"""Code books: the finite sets of values a quantized weight can take.

NF4 and FP4 are bitsandbytes' 4-bit tables (index = the 4-bit code), the dynamic map is its
256-value 8-bit table, and `int_grid` gives the integer levels of plain absmax / zero-point
quantization. All are float32 tensors on the CPU; callers move them to their input's device.
"""

from __future__ import annotations

import torch

from ._checks import check_bits

__all__ = [
    "NF4", "FP4", "FP4_RAW", "nf4_quantiles", "nf4_from_normal", "nf4_construction", "normal_cdf",
    "dynamic_map", "int_grid", "get_codebook", "midpoints", "NF4_OFFSET",
]

NF4_OFFSET = 0.9677083  # QLoRA's choice: the outermost quantile probability, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2

# bitsandbytes `get_4bit_type("nf4")`, index 0..15 (sorted; 7 negative values, an exact 0, 8 positive).
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)

# bitsandbytes `get_4bit_type("fp4")`: bit 3 is the sign, then 2 exponent bits and 1 mantissa bit.
# Raw magnitudes in bit-pattern order; divided by 12 so that the largest is 1.
# Note this is NOT the OCP E2M1 set {0, .5, 1, 1.5, 2, 3, 4, 6}: code 0b0001 is 0.0625, not 0.5.
# Code 0b1000 is "-0"; bitsandbytes writes it as the integer literal -0, so it is stored as +0.0.
FP4_RAW = torch.tensor([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3],
                       dtype=torch.float32)
FP4 = FP4_RAW / 12


def nf4_quantiles(offset: float = NF4_OFFSET) -> tuple[torch.Tensor, torch.Tensor]:
    """The 15 probabilities p and standard normal quantiles z that NF4 is built from, float32 (15,)
    each, sorted ascending, so that P(Z <= z[i]) = p[i].

    8 positive quantiles at the probabilities ``linspace(offset, 0.5, 9)[:-1]`` and 7 negative ones,
    minus the quantiles at ``linspace(offset, 0.5, 8)[:-1]`` (p = 1 - those). The probabilities are
    float32, the quantile is taken in float64 and stored as float32, as bitsandbytes does with scipy.
    Worked number: the top probability is the offset 0.9677083, z = ndtri(0.9677083) = 1.8481.

    >>> p, z = nf4_quantiles(); round(float(p[-1]), 7), round(float(z[-1]), 4)
    (0.9677083, 1.8481)
    """
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be in (0.5, 1), got {offset!r}")
    pos = torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1]   # (8,) probabilities
    neg = torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1]   # (7,)
    z = torch.cat([torch.special.ndtri(pos.double()).float(), -torch.special.ndtri(neg.double()).float()])
    p = torch.cat([pos, 1 - neg])
    order = z.argsort()
    return p[order], z[order]


def nf4_from_normal(offset: float = NF4_OFFSET) -> torch.Tensor:
    """Build the NF4 code book from normal quantiles, step by step.

    The 15 quantiles of `nf4_quantiles` plus an exact 0, sorted and divided by the largest so the
    ends are exactly -1 and +1, float32 (16,). With the default offset this gives `NF4` bit for bit.
    Worked number: the largest quantile is ndtri(0.9677083) = 1.8481, which becomes 1.0.

    >>> torch.equal(nf4_from_normal(), NF4)
    True
    """
    _, z = nf4_quantiles(offset)                                     # (15,)
    values = torch.cat([z, torch.zeros(1)]).sort().values            # (16,)
    return values / values.max()


def nf4_construction(offset: float = NF4_OFFSET) -> dict[str, torch.Tensor]:
    """Every piece of the NF4 construction at `offset`: "p" and "z" from `nf4_quantiles` (15,) and
    "values" = `nf4_from_normal(offset)` (16, with the exact 0), all float32 and sorted.
    Worked number: the top probability 0.9677 has z = 1.848 and becomes the value 1.0.

    >>> parts = nf4_construction(); round(float(parts["z"].max()), 3), float(parts["values"].max())
    (1.848, 1.0)
    """
    p, z = nf4_quantiles(offset)
    return {"p": p, "z": z, "values": nf4_from_normal(offset)}


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    """P(Z <= z) for a standard normal Z, elementwise, in z's dtype: the inverse of the quantile
    (ndtri) that NF4's values come from. Worked number: normal_cdf(1.8481) = 0.9677.

    >>> round(float(normal_cdf(torch.tensor(1.8481))), 4)
    0.9677
    """
    return torch.special.ndtr(torch.as_tensor(z))


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 256-value 8-bit dynamic map of bitsandbytes (`create_dynamic_map`), sorted, float32.

    Signed: for i in 0..6, the midpoints of ``linspace(0.1, 1, 2**i + 1)`` times ``10**(i - 6)``
    and their negatives, plus 0 and 1.0. Unsigned uses twice the fraction levels and no negatives.
    Worked number: the smallest positive value is 0.55 * 1e-6 = 5.5e-07; min is -0.99296875.

    >>> m = dynamic_map(); (m.numel(), round(float(m.min()), 7), float(m.max()))
    (256, -0.9929687, 1.0)
    """
    values: list[float] = []
    for i in range(7):  # exponent 10**-6 .. 10**0; more fraction levels as the exponent grows
        n_fraction = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        boundaries = torch.linspace(0.1, 1, n_fraction, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0   # float32, as bitsandbytes computes it
        values += ((10 ** (i - 6)) * means).tolist()
        if signed:
            values += (-(10 ** (i - 6)) * means).tolist()
    values += [0.0, 1.0]
    return torch.tensor(values, dtype=torch.float32).sort().values


def int_grid(bits: int, signed: bool = True) -> torch.Tensor:
    """Integer levels for `bits`-bit quantization, float32: signed absmax uses the symmetric
    range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (8 bit: -127..127), unsigned (zero-point)
    uses ``[0, 2**bits - 1]`` (8 bit: 0..255).

    >>> int_grid(2).tolist()
    [-1.0, 0.0, 1.0]
    """
    check_bits(bits)
    if signed:
        m = 2 ** (bits - 1) - 1
        return torch.arange(-m, m + 1, dtype=torch.float32)
    return torch.arange(0, 2 ** bits, dtype=torch.float32)


def midpoints(code: torch.Tensor) -> torch.Tensor:
    """The decision boundaries between neighbouring values of a sorted code book, (n - 1,)."""
    return (code[:-1] + code[1:]) / 2


def get_codebook(quant_type: str) -> torch.Tensor:
    """The 16-value table for ``"nf4"`` or ``"fp4"`` (index = 4-bit code)."""
    tables = {"nf4": NF4, "fp4": FP4}
    if quant_type not in tables:
        raise ValueError(f"quant_type must be one of {sorted(tables)}, got {quant_type!r}")
    return tables[quant_type]
