"""Round-to-nearest (RTN) integer quantization of a (out, in) weight in blocks of input columns:
the baseline every other method here is measured against.

Each row is cut into blocks of `blocksize` consecutive input columns (the papers' "group size"; the
last block of a row is shorter when blocksize does not divide `in`: the embedded model's rows of 576
at 128 give 4 blocks of 128 and one of 64); each block gets one float32 scale (symmetric: codes -7..7
at 4 bits, x ~= q * scale) or a scale and an integer zero point (asymmetric: codes 0..15,
x ~= (q - zero_point) * scale): `qlearn.affine` in the "none" / "int" domain, the same arithmetic as
`absmax_quantize` / `zeropoint_quantize` with axis=0 on each block of columns. `group_params` +
`quantize_column` are that arithmetic split in two, for methods that fix a block's scale first and
round one column at a time later (GPTQ). `GroupQuantized` is the record of RTN, GPTQ and HQQ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_bits, check_int, check_tensor
from ..affine import choose_qparams_affine, dequantize_affine, quantize_affine

__all__ = ["GroupQuantized", "rtn", "group_params", "quantize_column", "check_weight", "row_blocks",
           "column_error", "output_error"]


def check_weight(w, blocksize: int | None, name: str = "w") -> torch.Tensor:
    """A 2-D float weight (out, in) and a blocksize that is None (one block a row) or a positive int."""
    w = check_tensor(w, name)
    if w.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (out_features, in_features) weight; got shape {tuple(w.shape)}")
    if blocksize is not None:
        check_int(blocksize, "blocksize", minimum=1)
    return w


def row_blocks(t: torch.Tensor, blocksize: int) -> list[torch.Tensor]:
    """Views of a (rows, cols) tensor as blocks of `blocksize` columns: [(rows, cols // blocksize, blocksize)]
    and, when blocksize does not divide cols, (rows, 1, cols % blocksize) for the short last block.

    >>> [tuple(p.shape) for p in row_blocks(torch.zeros(2, 10), 4)]
    [(2, 2, 4), (2, 1, 2)]
    """
    rows, cols = t.shape
    full = cols - cols % blocksize
    parts = [t[:, :full].reshape(rows, -1, blocksize)] if full else []
    return parts + ([t[:, full:].reshape(rows, 1, -1)] if full < cols else [])


@dataclass(frozen=True)
class GroupQuantized:
    """Integer codes (out, in) (int8 symmetric, uint8 asymmetric), scale (out, blocks) and, when asymmetric,
    zero_point (out, blocks) in code units: x ~= (codes - zero_point) * scale, or codes * scale without one;
    block k of a row = columns k*blocksize .. (k+1)*blocksize - 1. RTN and GPTQ store float32 scales and
    integer zero points (`bits` bits each when packed); HQQ (`HQQQuantized`) float16 ones, its zero point
    fractional."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    blocksize: int
    bits: int
    dtype: torch.dtype

    @property
    def zero_point_domain(self) -> str:
        """"none" (symmetric) or "int" (x = (q - zero_point) * scale): `qlearn.affine`."""
        return "none" if self.zero_point is None else "int"

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`qlearn.affine.dequantize_affine` of each block in float32, cast to `dtype` (default: the input's),
        shape (out, in)."""
        parts = row_blocks(self.codes, self.blocksize)
        counts = [p.shape[1] for p in parts]
        zeros = [None] * len(parts) if self.zero_point is None else self.zero_point.split(counts, dim=1)
        values = [dequantize_affine(p, s, z, self.zero_point_domain).flatten(1)
                  for p, s, z in zip(parts, self.scale.split(counts, dim=1), zeros, strict=True)]
        return torch.cat(values, dim=1).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """`bits` bits a code, a float32 scale a block, and `bits` bits a zero point a block if asymmetric."""
        zeros = 0 if self.zero_point is None else math.ceil(self.zero_point.numel() * self.bits / 8)
        return math.ceil(self.codes.numel() * self.bits / 8) + 4 * self.scale.numel() + zeros

    @property
    def bits_per_param(self) -> float:
        """4 + 32 * 5 / 576 = 4.278 for 4-bit symmetric rows of 576 at blocksize 128 (5 blocks a row)."""
        return 8 * self.nbytes / self.codes.numel()


def rtn(w: torch.Tensor, bits: int = 4, blocksize: int | None = 128, symmetric: bool = True) -> GroupQuantized:
    """Round every weight to the nearest level of its block's grid.

    w: float (out, in). blocksize: columns a block (None: one block per row).
    Worked number: 4-bit symmetric, a block whose largest |w| is 0.07 has scale 0.01, and
    w = 0.034 -> q = 3 -> 0.03.

    >>> rtn(torch.tensor([[0.07, 0.034, -0.02, 0.0]]), blocksize=4).codes.tolist()
    [[7, 3, -2, 0]]
    """
    w = check_weight(w, blocksize)
    check_bits(bits)
    domain = "none" if symmetric else "int"
    b = blocksize or w.shape[1]
    codes, scales, zeros = [], [], []
    for part in row_blocks(w.float(), b):                                   # (out, blocks, b)
        scale, zero = choose_qparams_affine(part, bits, domain)             # (out, blocks) each
        codes.append(quantize_affine(part, scale, zero, bits, domain).flatten(1))
        scales.append(scale)
        zeros.append(zero)
    codes = torch.cat(codes, dim=1).to(torch.int8 if symmetric else torch.uint8)
    return GroupQuantized(codes, torch.cat(scales, dim=1), None if symmetric else torch.cat(zeros, dim=1), b,
                          bits, w.dtype)


def group_params(wg: torch.Tensor, bits: int = 4, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of one block, as `rtn` computes them.

    wg: float32 (out, b), the block's columns. Returns (scale, zero_point), each float32 (out,);
    zero_point is 0 for symmetric. `qlearn.affine.choose_qparams_affine`, "none" or "int".

    >>> group_params(torch.tensor([[0.07, -0.01]]))[0].tolist()
    [0.009999999776482582]
    """
    check_bits(bits)
    scale, zero = choose_qparams_affine(wg, bits, "none" if symmetric else "int")
    return scale, torch.zeros_like(scale) if zero is None else zero


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int = 4,
                    symmetric: bool = True) -> torch.Tensor:
    """Codes of one column given its rows' scale and zero point (all float32 (out,)): float32 (out,) integers.

    Symmetric: clamp(round(w / scale), -qmax, qmax); asymmetric: clamp(round(w / scale + zero), 0, 2**bits - 1)
    (`qlearn.affine.quantize_affine`). The value it stands for is (q - zero) * scale.

    >>> quantize_column(torch.tensor([0.034]), torch.tensor([0.01]), torch.tensor([0.0])).tolist()
    [3.0]
    """
    domain = "none" if symmetric else "int"
    return quantize_affine(w[:, None], scale, None if symmetric else zero, bits, domain)[:, 0]


def column_error(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """Mean |w_hat - w| over the rows, per input column: float32 (in,) for weights (out, in).

    >>> column_error(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), torch.zeros(2, 2)).tolist()
    [0.0, 2.0]
    """
    return (w_hat.float() - w.float()).abs().mean(dim=0)


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Mean squared error of the layer's output, mean((x w_hat^T - x w^T)^2), for inputs x (tokens, in).

    >>> output_error(torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    4.0
    """
    return float(((x.float() @ (w_hat.float() - w.float()).T) ** 2).mean())
