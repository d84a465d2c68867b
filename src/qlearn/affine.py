"""The affine integer family in one place: choose a scale (and a zero), round, and decode back.

Every integer format qlearn implements is a line through its codes, x ~= a * q + b, held in one of three
ways (``zero_point_domain``, torchao's ``ZeroPointDomain`` in ``torchao/quantization/quant_primitives.py``,
https://github.com/pytorch/ao, whose ``choose_qparams_affine`` / ``quantize_affine`` / ``dequantize_affine``
these mirror on one block layout):

    "none"   x = q * scale                      symmetric: absmax_quantize, RTN, GPTQ; GGUF Q8_0
    "int"    x = (q - zero_point) * scale       zero_point: the integer code that decodes to 0.0
                                                (zeropoint_quantize, RTN / GPTQ asymmetric; GGUF Q4_0 is
                                                a symmetric scale with the fixed zero_point 8)
    "float"  x = q * scale + minimum            minimum: the value of code 0 (GGUF Q4_1's m,
                                                zeropoint_quantize's "float" domain)

Two stored layouts map onto these. torch's int4 kernels (``qlearn.kernels.fused``, torchao's
"tinygemm" layout) keep ``zero``, the value of the middle code 8: x = (q - 8) * scale + zero, so
minimum = zero - 8 * scale. HQQ keeps the library's zero point in code units but fractional (it is
optimised, not rounded): x = (q - zero_point) * scale, the "int" formula; torchao maps it to the float
domain as minimum = -zero_point * scale (``_convert_to_affinequantized_format``).

The functions work on blocks: a float32 tensor (..., blocksize) with one scale (and zero) per block,
shape (...); the callers choose the blocks (``qlearn.granularity.group``, a row's columns, GGUF's 32).
Worked number: 4 bits, "float", a block spanning [-0.3, 0.45]: scale = 0.75 / 15 = 0.05, minimum -0.3,
so 0.1 is code round(0.4 / 0.05) = 8, decoded 8 * 0.05 - 0.3 = 0.1.
"""

from __future__ import annotations

import torch

from ._checks import check_choice, check_finite

__all__ = ["ZERO_POINT_DOMAINS", "ROUNDINGS", "code_range", "choose_qparams_affine", "quantize_affine",
           "dequantize_affine"]

ZERO_POINT_DOMAINS = ("none", "int", "float")
ROUNDINGS = ("half_even", "ggml")


def code_range(bits: int, zero_point_domain: str) -> tuple[int, int]:
    """(qmin, qmax): -(2**(bits-1) - 1)..2**(bits-1) - 1 for "none" (int8 codes), 0..2**bits - 1 otherwise.

    >>> code_range(4, "none"), code_range(4, "float")
    ((-7, 7), (0, 15))
    """
    check_choice(zero_point_domain, "zero_point_domain", ZERO_POINT_DOMAINS)
    if zero_point_domain == "none":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def choose_qparams_affine(blocks: torch.Tensor, bits: int,
                          zero_point_domain: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each block's (scale, zero) from its own values: blocks float32 (..., blocksize) -> float32 (...) each.

    "none": scale = absmax / qmax, zero None. "int": the range [min, max] widened to hold 0, scale =
    (max - min) / (2**bits - 1), zero_point = round(-min / scale) (0 where the scale is 0), so 0.0 is
    exact. "float": scale = (max - min) / (2**bits - 1) over exactly [min, max], minimum = min.
    Worked number: 4 bits on [-10.2, 10.2]: scale = (10.2 - (-10.2)) / 15 = 1.36, zero_point 7.5 -> 8.

    >>> s, z = choose_qparams_affine(torch.tensor([[-10.2, 10.2]]), 4, "int")
    >>> round(float(s), 4), float(z)
    (1.36, 8.0)
    """
    qmin, qmax = code_range(bits, zero_point_domain)
    if zero_point_domain == "none":
        absmax = blocks.abs().amax(dim=-1)
        check_finite(absmax)
        return absmax / qmax, None
    lo, hi = blocks.amin(dim=-1), blocks.amax(dim=-1)
    check_finite(hi - lo)
    if zero_point_domain == "float":
        return (hi - lo) / qmax, lo
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / qmax
    return scale, (-lo / _safe(scale)).round().clamp(qmin, qmax)


def quantize_affine(blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                    zero_point_domain: str, rounding: str = "half_even") -> torch.Tensor:
    """The codes of `blocks` (..., blocksize) given each block's scale and zero (...): float32 integers, same shape.

    "none": round(x / scale); "int": round(x / scale + zero_point); "float": round((x - minimum) / scale);
    then clamped to `code_range`. A zero scale divides by 1 (an all-zero block gets code 0 or its zero point).
    rounding "half_even": torch.round of the quotient. "ggml": llama.cpp's and gguf-py's arithmetic,
    trunc(x * (1 / scale) + zero_point + 0.5) (1 / 0 taken as 0), which rounds halves up and multiplies by
    the reciprocal, so its codes are the bytes gguf writes.
    Worked number: scale 0.05, minimum -0.3: x = 0.1 -> (0.1 + 0.3) / 0.05 = 8.

    >>> quantize_affine(torch.tensor([[-0.3, 0.1, 0.45]]), torch.tensor([0.05]), torch.tensor([-0.3]), 4, "float")
    tensor([[ 0.,  8., 15.]])
    """
    check_choice(rounding, "rounding", ROUNDINGS)
    qmin, qmax = code_range(bits, zero_point_domain)
    s, z = scale.unsqueeze(-1), None if zero is None else zero.unsqueeze(-1)
    if rounding == "ggml":
        inv = torch.where(s == 0, torch.zeros_like(s), 1 / torch.where(s == 0, torch.ones_like(s), s))
        if zero_point_domain == "float":
            return torch.trunc((blocks - z) * inv + 0.5).clamp(qmin, qmax)
        return torch.trunc(blocks * inv + ((0 if z is None else z) + 0.5)).clamp(qmin, qmax)
    s = _safe(s)
    if zero_point_domain == "none":
        return torch.round(blocks / s).clamp(qmin, qmax)
    if zero_point_domain == "int":
        return torch.round(blocks / s + z).clamp(qmin, qmax)
    return torch.round((blocks - z) / s).clamp(qmin, qmax)


def dequantize_affine(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      zero_point_domain: str) -> torch.Tensor:
    """The values of codes (..., blocksize) (any integer or float dtype) with scale, zero (...): float32.

    "none": q * scale; "int": (q - zero_point) * scale; "float": q * scale + minimum (two roundings, as
    gguf-py decodes Q4_1). Worked number: code 8 with scale 0.05 and minimum -0.3 -> 0.1.

    >>> dequantize_affine(torch.tensor([[0, 8, 15]]), torch.tensor([0.05]), torch.tensor([-0.3]), "float")
    tensor([[-0.3000,  0.1000,  0.4500]])
    """
    check_choice(zero_point_domain, "zero_point_domain", ZERO_POINT_DOMAINS)
    q, s = codes.float(), scale.float().unsqueeze(-1)
    if zero_point_domain == "none":
        return q * s
    z = zero.float().unsqueeze(-1)
    return (q - z) * s if zero_point_domain == "int" else q * s + z


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """scale with 1 where it is 0 (a constant block): dividing by it leaves the values as they are."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))
