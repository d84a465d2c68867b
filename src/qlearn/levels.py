"""Levels: the values a quantized group can dequantize to.

Every format has a grid of codes and a table of what each code stands for before scaling: the
integers -qmax..qmax for absmax, 0..2**bits - 1 for zero-point, the 16-value NF4 / FP4 code book
for 4-bit. A group's levels are that table scaled by the group's scale (absmax, or scale and zero
point). `code_values` is that one grid; `levels_of`, `unit_levels` and `to_unit_scale` read it.
Tables are small, so results are float32 on the CPU.
"""

from __future__ import annotations

import torch

from . import codebooks
from .affine import dequantize_affine
from .granularity import group, ungroup
from .intquant import AbsmaxQuantized, ZeroPointQuantized
from .quantize import Quantized4bit

__all__ = ["codes_of", "code_values", "levels_of", "unit_levels", "to_unit_scale"]


def _grid(result) -> torch.Tensor:
    """The unscaled value of every code, float32, in code order (the format's one level grid)."""
    if isinstance(result, Quantized4bit):
        return codebooks.get_codebook(result.quant_type)                     # (16,), code = index
    if isinstance(result, ZeroPointQuantized):
        return codebooks.int_grid(result.bits, signed=False)                 # 0 .. 2**bits - 1
    if isinstance(result, AbsmaxQuantized):
        return codebooks.int_grid(result.bits, signed=True)                  # -qmax .. qmax
    raise TypeError(f"result must be a qlearn quantization result (Quantized4bit, AbsmaxQuantized, "
                    f"ZeroPointQuantized), got {type(result).__name__}")


def codes_of(result) -> torch.Tensor:
    """Every code the format of `result` has, int64 ascending: -qmax..qmax (absmax), 0..2**bits - 1
    (zero-point), 0..15 (NF4 / FP4). Worked number: absmax 4-bit has the 15 codes -7..7.

    >>> import qlearn as ql
    >>> codes_of(ql.absmax_quantize(torch.tensor([0.7, -0.2]), bits=4)).tolist()
    [-7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7]
    """
    grid = _grid(result)
    return torch.arange(16) if isinstance(result, Quantized4bit) else grid.long()


def code_values(result, g: int = 0) -> torch.Tensor:
    """The value each code of `codes_of(result)` dequantizes to in group `g`, float32 (n_codes,):
    code * scale (absmax), (code - zero_point) * scale or code * scale + minimum (zero-point, "int" or
    "float" domain: `qlearn.affine.dequantize_affine`), code_book[code] * absmax (4-bit).

    Worked number: absmax 4-bit of [0.7, -0.2] has scale 0.7 / 7 = 0.1, so code 3 is 0.3.

    >>> import qlearn as ql
    >>> round(float(code_values(ql.absmax_quantize(torch.tensor([0.7, -0.2]), bits=4))[10]), 4)
    0.3
    """
    grid = _grid(result)
    if isinstance(result, Quantized4bit):
        return grid * result.block_absmax()[g].cpu()
    domain = result.zero_point_domain
    zero = {"none": None, "int": getattr(result, "zero_point", None), "float": getattr(result, "minimum", None)}[domain]
    return dequantize_affine(grid, result.scale[g].cpu(), None if zero is None else zero[g].cpu(), domain)


def levels_of(result, g: int = 0) -> torch.Tensor:
    """Sorted distinct values group `g` of `result` can dequantize to, float32.

    Absmax: scale * (-qmax..qmax), 2**bits - 1 values; zero-point: (0..2**bits-1 - zp) * scale,
    2**bits values; NF4: 16 values; FP4: 15 (its +0 and -0 codes are the same value).
    Worked number: absmax 4-bit with absmax 0.7 has scale 0.1 and levels -0.7, -0.6, ..., 0.7.

    >>> import qlearn as ql
    >>> levels_of(ql.absmax_quantize(torch.tensor([0.7, -0.2]), bits=4)).numel()
    15
    """
    return torch.unique(code_values(result, g).float())


def unit_levels(result) -> torch.Tensor:
    """The value of each code of `codes_of(result)` on the [-1, 1] scale of a group whose absmax
    is 1, float32: the NF4 / FP4 code book itself, or absmax's -qmax..qmax divided by qmax. The
    same for every group, so codes of different blocks can be counted together.
    Zero-point has no such scale (its grid moves with the zero point): TypeError.
    Worked number: absmax 4-bit: -7/7 .. 7/7, i.e. -1.0, -0.857, ..., 1.0.

    >>> import qlearn as ql
    >>> unit_levels(ql.absmax_quantize(torch.tensor([0.7, -0.2]), bits=2)).tolist()
    [-1.0, 0.0, 1.0]
    """
    _check_unit_scale(result)
    grid = _grid(result)
    return grid if isinstance(result, Quantized4bit) else grid / grid.max()


def _check_unit_scale(result) -> None:
    if not isinstance(result, (Quantized4bit, AbsmaxQuantized)):
        raise TypeError("result must be a Quantized4bit or AbsmaxQuantized (zero-point levels have no "
                        f"fixed [-1, 1] scale), got {type(result).__name__}")


def to_unit_scale(x: torch.Tensor, result) -> torch.Tensor:
    """`x` divided by its group's absmax (the largest |level| of that group), float32 in x's shape
    and device: the scale of `unit_levels`, where every value lies in [-1, 1].

    For 4-bit the absmax is the stored (or double-quant reconstructed) block absmax; for absmax
    results it is scale * qmax. An all-zero group stays 0. Worked number: x = [0.5, -1.0] in one
    NF4 block has absmax 1.0 and stays [0.5, -1.0]; [0.2, 0.4] becomes [0.5, 1.0].

    >>> import qlearn as ql
    >>> x = torch.tensor([0.2, 0.4])
    >>> to_unit_scale(x, ql.quantize_4bit(x)).tolist()
    [0.5, 1.0]
    """
    _check_unit_scale(result)
    if isinstance(result, Quantized4bit):
        absmax, axis = result.block_absmax(), None                       # (blocks,)
    else:
        absmax, axis = result.scale * _grid(result).max(), result.axis   # (groups,) scale * qmax
    g = group(x.float(), axis, result.blocksize)                         # (groups, n)
    return ungroup(g / absmax.to(g.device).clamp(min=1e-38)[:, None], x.shape, axis)
