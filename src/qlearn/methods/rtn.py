"""Round-to-nearest (RTN) integer quantization of a (out, in) weight in groups of g input columns:
the baseline every other method here is measured against.

Each row is cut into groups of `group_size` consecutive input columns (the last group of a row is
shorter when g does not divide `in`: the embedded model's rows of 576 at g = 128 give 4 groups of 128
and one of 64); each group gets one float32 scale (symmetric: codes -7..7 at 4 bits, x ~= q * scale)
or a scale and an integer zero point (asymmetric: codes 0..15, x ~= (q - z) * scale). Each group of
columns is qlearn's own `absmax_quantize` / `zeropoint_quantize` with axis=0 (one scale a row).
`group_params` + `quantize_column` are the same arithmetic split in two, for methods that fix a
group's scale first and round one column at a time later (GPTQ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_bits, check_tensor
from ..intquant import absmax_quantize, zeropoint_quantize

__all__ = ["GroupQuantized", "rtn", "group_params", "quantize_column", "check_weight", "column_error",
           "output_error"]


def check_weight(w, group_size: int | None, name: str = "w") -> torch.Tensor:
    """A 2-D float weight (out, in) and a group size that is None (one group a row) or a positive int."""
    w = check_tensor(w, name)
    if w.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (out_features, in_features) weight; got shape {tuple(w.shape)}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size must be None (one group a row) or a positive integer; got {group_size!r}")
    return w


@dataclass(frozen=True)
class GroupQuantized:
    """Integer codes (out, in) (int8 symmetric, uint8 asymmetric), float32 scale (out, groups) and,
    when asymmetric, an integer-valued float32 zero (out, groups): x ~= (codes - zero) * scale,
    group k of a row = columns k*g .. (k+1)*g - 1."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    group_size: int
    bits: int
    dtype: torch.dtype

    def _per_column(self, t: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(self.codes.shape[1], device=t.device) // self.group_size
        return t[:, idx]                                                     # (out, in)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(codes - zero) * scale in float32, cast to `dtype` (default: the input's), shape (out, in)."""
        q = self.codes.float()
        if self.zero is not None:
            q = q - self._per_column(self.zero)
        return (q * self._per_column(self.scale)).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """`bits` bits a code, a float32 scale a group, and `bits` bits a zero point a group if asymmetric."""
        zeros = 0 if self.zero is None else math.ceil(self.zero.numel() * self.bits / 8)
        return math.ceil(self.codes.numel() * self.bits / 8) + 4 * self.scale.numel() + zeros

    @property
    def bits_per_param(self) -> float:
        """4 + 32 * 5 / 576 = 4.278 for 4-bit symmetric rows of 576 at g = 128 (5 groups a row)."""
        return 8 * self.nbytes / self.codes.numel()


def rtn(w: torch.Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = True) -> GroupQuantized:
    """Round every weight to the nearest level of its group's grid.

    w: float (out, in). group_size: columns a group (None: one group per row).
    Worked number: 4-bit symmetric, a group whose largest |w| is 0.07 has scale 0.01, and
    w = 0.034 -> q = 3 -> 0.03.

    >>> rtn(torch.tensor([[0.07, 0.034, -0.02, 0.0]]), group_size=4).codes.tolist()
    [[7, 3, -2, 0]]
    """
    w = check_weight(w, group_size)
    check_bits(bits)
    g = group_size or w.shape[1]
    parts = [(absmax_quantize if symmetric else zeropoint_quantize)(c, bits, axis=0) for c in w.split(g, dim=1)]
    codes = torch.cat([p.codes for p in parts], dim=1)
    scale = torch.stack([p.scale for p in parts], dim=1)                     # (out, groups)
    zero = None if symmetric else torch.stack([p.zero_point for p in parts], dim=1)
    return GroupQuantized(codes, scale, zero, g, bits, w.dtype)


def group_params(wg: torch.Tensor, bits: int = 4, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of one group, as `rtn` computes them.

    wg: float32 (out, g), the group's columns. Returns (scale, zero), each float32 (out,);
    zero is 0 for symmetric. Same formulas as `absmax_quantize` / `zeropoint_quantize`.

    >>> group_params(torch.tensor([[0.07, -0.01]]))[0].tolist()
    [0.009999999776482582]
    """
    check_bits(bits)
    if symmetric:
        scale = wg.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
        return scale, torch.zeros_like(scale)
    qmax = 2 ** bits - 1
    lo, hi = wg.amin(dim=1).clamp(max=0), wg.amax(dim=1).clamp(min=0)
    scale = (hi - lo) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, (-lo / safe).round().clamp(0, qmax)


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int = 4,
                    symmetric: bool = True) -> torch.Tensor:
    """Codes of one column given its rows' scale and zero (all float32 (out,)): float32 (out,) integers.

    Symmetric: clamp(round(w / scale), -qmax, qmax); asymmetric: clamp(round(w / scale + zero), 0, 2**bits - 1).
    The value it stands for is (q - zero) * scale.

    >>> quantize_column(torch.tensor([0.034]), torch.tensor([0.01]), torch.tensor([0.0])).tolist()
    [3.0]
    """
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return torch.round(w / safe).clamp(-qmax, qmax)
    return torch.round(w / safe + zero).clamp(0, 2 ** bits - 1)


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
