"""Integer quantizers: absmax (symmetric) and zero-point (asymmetric) at 2..8 bits, per tensor,
per axis or blockwise, and LLM.int8's row-wise int8 with outlier columns (bit-exact with bitsandbytes).

Codes are integers on a uniform grid (`qlearn.codebooks.int_grid`), unlike NF4/FP4's code books.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import cuda_rules
from ._checks import check_bits, check_choice, check_finite, check_tensor, check_threshold
from .affine import choose_qparams_affine, dequantize_affine, quantize_affine
from .granularity import group, ungroup

__all__ = ["AbsmaxQuantized", "ZeroPointQuantized", "Int8Vectorwise", "absmax_quantize", "zeropoint_quantize",
           "int8_vectorwise"]


@dataclass(frozen=True)
class _GroupQuantized:
    """Integer codes in x's shape with float32 scales (groups,), one group per tensor, per index of `axis`,
    or per block of `blocksize` flattened elements (`qlearn.granularity`); decoded by
    `qlearn.affine.dequantize_affine` in the record's `zero_point_domain`."""

    codes: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    bits: int
    axis: int | None
    blocksize: int | None

    zero_point_domain = "none"

    def _zero(self) -> torch.Tensor | None:
        return None

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The decoded values in float32 (`qlearn.affine.dequantize_affine`), cast to `dtype` (default: the
        input's), in the input's shape."""
        g = group(self.codes, self.axis, self.blocksize)                    # (groups, n)
        values = dequantize_affine(g, self.scale, self._zero(), self.zero_point_domain)
        return ungroup(values, self.shape, self.axis).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes when stored packed: `bits` bits a code, one float32 scale a group (+ zero points)."""
        return math.ceil(self.codes.numel() * self.bits / 8) + 4 * self.scale.numel()

    @property
    def bits_per_param(self) -> float:
        """bits + 32 / group size (+ the zero point's): 4.5 for 4-bit absmax in blocks of 64."""
        return 8 * self.nbytes / self.shape.numel()


@dataclass(frozen=True)
class AbsmaxQuantized(_GroupQuantized):
    """Symmetric (absmax) quantization: codes int8, x ~= codes * scale (0 is always exactly 0)."""


@dataclass(frozen=True)
class ZeroPointQuantized(_GroupQuantized):
    """Asymmetric (zero-point) quantization: codes uint8 in 0..2**bits - 1 and, per group (groups,) float32,
    either an integer zero_point (zero_point_domain "int": x ~= (codes - zero_point) * scale) or the
    group's minimum ("float": x ~= codes * scale + minimum, GGUF Q4_1's form); the other one is None."""

    zero_point: torch.Tensor | None = None
    minimum: torch.Tensor | None = None
    zero_point_domain: str = "int"

    def _zero(self) -> torch.Tensor:
        return self.zero_point if self.zero_point_domain == "int" else self.minimum

    @property
    def nbytes(self) -> int:
        """As absmax, plus a zero a group: `bits` bits for an integer zero point, float32 for a minimum."""
        groups = self.scale.numel()
        zeros = math.ceil(groups * self.bits / 8) if self.zero_point_domain == "int" else 4 * groups
        return super().nbytes + zeros


def absmax_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None,
                    blocksize: int | None = None) -> AbsmaxQuantized:
    """Symmetric quantization to the integers -(2**(bits-1) - 1) .. 2**(bits-1) - 1.

    Granularity: per tensor (default), per index of `axis` (axis=0 on a (out, in) weight: one
    scale per output row), or per block of `blocksize` consecutive elements of the flattened tensor.
    scale = absmax / qmax; q = round(x / scale) (half to even): `qlearn.affine`'s "none" domain.
    Worked number: 8 bits, absmax 2.54 -> scale 0.02, x = 1.0 -> q = 50.

    >>> absmax_quantize(torch.tensor([1.0, -2.54])).codes.tolist()
    [50, -127]
    """
    x = check_tensor(x, "x")
    check_bits(bits)
    g = group(x.float(), axis, blocksize)                                # (groups, n)
    scale, _ = choose_qparams_affine(g, bits, "none")
    q = quantize_affine(g, scale, None, bits, "none")
    return AbsmaxQuantized(ungroup(q, x.shape, axis).to(torch.int8), scale, x.shape, x.dtype, bits, axis, blocksize)


def zeropoint_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None, blocksize: int | None = None,
                       zero_point_domain: str = "int") -> ZeroPointQuantized:
    """Asymmetric quantization to 0 .. 2**bits - 1, using the full [min, max] range of each group.

    scale = (max - min) / (2**bits - 1); "int" domain: zero_point = round(-min / scale) with the range
    widened to include 0 (so 0.0 is exact, the textbook rule), q = round(x / scale + zero_point);
    "float" domain: the range is exactly [min, max], q = round((x - min) / scale) and the record keeps
    `minimum` (GGUF's Q4_1 style: x = q * scale + min). Granularity as in `absmax_quantize`.
    Worked number: 4 bits on [-10.2, 10.2] -> scale = (10.2 - (-10.2)) / 15 = 1.36, zero_point 8.

    >>> zeropoint_quantize(torch.tensor([-10.2, 10.2]), bits=4).zero_point.tolist()
    [8.0]
    """
    x = check_tensor(x, "x")
    check_bits(bits)
    check_choice(zero_point_domain, "zero_point_domain", ("int", "float"))
    g = group(x.float(), axis, blocksize)                                # (groups, n)
    scale, zero = choose_qparams_affine(g, bits, zero_point_domain)
    q = quantize_affine(g, scale, zero, bits, zero_point_domain)
    codes = ungroup(q, x.shape, axis).to(torch.uint8)
    if zero_point_domain == "int":
        return ZeroPointQuantized(codes, scale, x.shape, x.dtype, bits, axis, blocksize, zero_point=zero)
    return ZeroPointQuantized(codes, scale, x.shape, x.dtype, bits, axis, blocksize, minimum=zero,
                              zero_point_domain="float")


@dataclass(frozen=True)
class Int8Vectorwise:
    """LLM.int8 row-wise quantization: codes int8 (the input's shape; rows are all but the last dim),
    row_absmax float32 (rows,),
    outlier_cols int64 (k,) indices of columns with any |x| >= threshold (empty when none);
    shape and dtype of the input."""

    codes: torch.Tensor
    row_absmax: torch.Tensor
    outlier_cols: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    rule: str = "bnb_cpu"

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """codes * row_absmax / 127 in float32, cast to `dtype` (default: the input's), input's shape.
        Outlier columns come back as 0: LLM.int8 keeps them in 16-bit, outside these codes."""
        rows = self.codes.reshape(-1, self.shape[-1]).float()          # (rows, cols)
        return (rows * (self.row_absmax[:, None] / 127)).view(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """One byte a code, one float32 absmax a row, and the outlier columns' values in 16-bit."""
        rows = self.row_absmax.numel()
        return self.codes.numel() + 4 * rows + 2 * rows * self.outlier_cols.numel()

    @property
    def bits_per_param(self) -> float:
        """8 + 32 / cols without outliers: 8.0078 for rows of 4096."""
        return 8 * self.nbytes / self.shape.numel()


def int8_vectorwise(x: torch.Tensor, threshold: float = 0.0, rule: str | None = None) -> Int8Vectorwise:
    """Row-wise int8 quantization with LLM.int8 outlier columns (bitsandbytes `int8_vectorwise_quant`).

    x: float tensor (rows, cols) (more dims are flattened into rows). With threshold > 0, every
    |x| >= threshold is an outlier: it is left out of its row's absmax, and its whole column is
    zeroed in the codes (LLM.int8 multiplies those columns in 16-bit). codes = round(x * scale),
    half to even, with scale = float32(127 / row_absmax) (one float32 division), exactly as bitsandbytes'
    CPU backend (rule "bnb_cpu"). rule "bnb_cuda" reproduces its CUDA kernel: x is cast to float16 first
    (the kernel's only dtype; bitsandbytes casts weights and inputs before calling it) and the scale is
    ``__fdividef(127, absmax)``, 127 times the GPU's approximate reciprocal (`qlearn.cuda_rules`), so a
    value within rounding of a .5 tie may go the other way. None follows x's device.
    Worked number: row [0.5, -1.27] -> absmax 1.27, codes [50, -127].

    >>> int8_vectorwise(torch.tensor([[0.5, -1.27]])).codes.tolist()
    [[50, -127]]
    """
    x = check_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions (rows, cols), got shape {tuple(x.shape)}")
    check_threshold(threshold)
    rule = cuda_rules.default_rule(x) if rule is None else rule
    check_choice(rule, "rule", cuda_rules.RULES)
    a = x.reshape(-1, x.shape[-1])                                # (rows, cols)
    if rule == "bnb_cuda":
        a = a.to(torch.float16)
    outlier_cols = torch.empty(0, dtype=torch.int64, device=x.device)
    if threshold > 0:
        outliers = a.abs() >= threshold
        outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)
        a = a.masked_fill(outliers, 0)
    row_absmax = a.abs().amax(dim=1).float()
    check_finite(row_absmax)
    if rule == "bnb_cuda":
        scale = 127.0 * cuda_rules.rcp_approx(row_absmax).to(a.device)   # (rows,) float32: __fdividef(127, absmax)
    else:
        scale = 127.0 / row_absmax
    codes = torch.round(a * scale.unsqueeze(1)).nan_to_num_(0).to(torch.int8)
    if a.shape[0] > 1 and outlier_cols.numel():
        codes[:, outlier_cols] = 0
    return Int8Vectorwise(codes.view(x.shape), row_absmax, outlier_cols, x.shape, x.dtype, rule)
