"""Quantizers: 4-bit blockwise (NF4/FP4, double quant), 8-bit blockwise, absmax, zero-point, LLM.int8.

Every function takes a float tensor (float32 / float16 / bfloat16 / float64) on any device, keeps
that device, and returns a frozen dataclass holding the integer codes plus the small metadata needed
to dequantize. `quantize_4bit` and `int8_vectorwise` are bit-exact with bitsandbytes 0.50.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import torch

from . import codebooks
from ._checks import check_bits, check_blocksize, check_choice, check_finite, check_tensor, group, ungroup

__all__ = [
    "Quantized4bit", "Blockwise8bit", "AbsmaxQuantized", "ZeroPointQuantized", "Int8Vectorwise",
    "quantize_4bit", "quantize_blockwise_8bit", "absmax_quantize", "zeropoint_quantize", "int8_vectorwise",
    "BLOCKSIZES_4BIT", "BLOCKSIZES_8BIT",
]

BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
BLOCKSIZES_8BIT = (64, 128, 256, 512, 1024, 2048, 4096)
DQ_BLOCKSIZE = 256   # double quantization: 8-bit blocks of 256 absmax values
DQ_RULES = ("nearest", "bnb_cpu")


@cache
def _table(name: str, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(code book, sorted midpoints, sort order) for "nf4" / "fp4" / "dynamic" on `device`."""
    code = codebooks.dynamic_map() if name == "dynamic" else codebooks.get_codebook(name)
    order = torch.argsort(code)   # NF4 and the dynamic map are sorted already; FP4 is in bit order
    bounds = codebooks.midpoints(code[order])
    return code.to(device), bounds.to(device), order.to(device)


def _block_absmax(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each block of a flat float32 tensor to [-1, 1]: returns (scaled (n,), absmax (blocks,)).

    Full blocks multiply by the float32 reciprocal 1/absmax; a partial last block divides by its
    absmax (both as bitsandbytes does, so the results agree to the last bit). A zero block keeps
    absmax 0 (its values scale to 0); a zero partial block stores 1e-38, again as bitsandbytes.
    """
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)                  # (blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                         # (blocks,)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).view(-1)
    if full < n:
        am = flat[full:].abs().amax().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.view(1)])
        scaled = torch.cat([scaled, flat[full:] / am])
    check_finite(absmax)
    return scaled.clamp_(-1, 1), absmax


@dataclass(frozen=True)
class Quantized4bit:
    """A 4-bit blockwise quantized tensor (bitsandbytes' NF4/FP4 layout).

    codes: uint8 (n,), one 4-bit code per element of the flattened input.
    absmax: float32 (blocks,); with double quant uint8 (blocks,) codes of ``absmax - offset``.
    offset: float32 scalar mean of the absmax (double quant only), nested_absmax: float32
    (ceil(blocks / 256),) the absmax of each block of 256 absmax values (double quant only).
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    quant_type: str
    blocksize: int
    offset: torch.Tensor | None = None
    nested_absmax: torch.Tensor | None = None
    dq_rule: str | None = None

    @property
    def double_quant(self) -> bool:
        return self.offset is not None

    @property
    def packed(self) -> torch.Tensor:
        """uint8 (ceil(n / 2),): byte i = codes[2i] << 4 | codes[2i+1] (first element in the HIGH
        nibble); an odd count is padded with the code of 0.0, as bitsandbytes does."""
        c = self.codes
        if c.numel() % 2:
            c = torch.cat([c, _zero_code(self.quant_type, c.device)])
        return (c[0::2] << 4) | c[1::2]

    def block_absmax(self) -> torch.Tensor:
        """float32 (blocks,) absmax per block; with double quant the reconstructed one
        ``dynamic[q] * nested_absmax + offset``."""
        if not self.double_quant:
            return self.absmax
        nested = Blockwise8bit(self.absmax, self.nested_absmax, torch.Size([self.absmax.numel()]),
                               torch.float32, DQ_BLOCKSIZE, self.dq_rule)
        return nested.dequantize() + self.offset

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """code[q] * absmax in float32, cast to `dtype` (default: the input's), in the input's shape."""
        code = _table(self.quant_type, str(self.codes.device))[0]
        values = code[self.codes.long()]                       # (n,) float32
        absmax = self.block_absmax()
        full = values.numel() - values.numel() % self.blocksize
        out = torch.empty_like(values)
        out[:full] = (values[:full].view(-1, self.blocksize) * absmax[: full // self.blocksize, None]).view(-1)
        out[full:] = values[full:] * absmax[-1]
        return out.view(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> dict[str, int]:
        """Storage in bytes: packed codes, absmax (float32 or uint8), nested state (offset +
        nested absmax). Code books are shared constants and not counted."""
        nested = 0
        if self.double_quant:
            nested = self.offset.numel() * 4 + self.nested_absmax.numel() * 4
        return {"codes": (self.codes.numel() + 1) // 2,
                "absmax": self.absmax.numel() * self.absmax.element_size(), "nested": nested}

    @property
    def bits_per_param(self) -> float:
        """Measured bits per element, everything included: 4.5 for NF4 with blocks of 64,
        ~4.127 with double quant (plus a hair for a partial block and the offset)."""
        return 8 * sum(self.nbytes.values()) / self.codes.numel()


@cache
def _zero_code_cached(quant_type: str, device: str) -> torch.Tensor:
    return _codes_4bit(torch.zeros(1, device=device), quant_type)


def _zero_code(quant_type: str, device: torch.device) -> torch.Tensor:
    return _zero_code_cached(quant_type, str(device))


def _codes_4bit(scaled: torch.Tensor, quant_type: str) -> torch.Tensor:
    """4-bit codes of values in [-1, 1]: bucketize on the 15 midpoints of the sorted code book
    (a value exactly on a midpoint takes the LOWER code), then map sorted rank to bit pattern."""
    _, bounds, order = _table(quant_type, str(scaled.device))
    rank = torch.bucketize(scaled, bounds, out_int32=True)
    if quant_type == "fp4":
        rank = order[rank]
    return rank.to(torch.uint8)


def quantize_4bit(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64,
                  double_quant: bool = False, dq_rule: str = "nearest") -> Quantized4bit:
    """Quantize `x` to 4 bits in blocks of `blocksize` consecutive elements (bitsandbytes layout).

    x: float tensor of any shape (flattened; a partial last block gets its own absmax).
    quant_type: "nf4" (normal-quantile code book) or "fp4" (bitsandbytes' 4-bit float).
    double_quant: quantize the float32 absmax again (8-bit dynamic map, blocks of 256, after
    subtracting their mean `offset`); `dq_rule` picks the nested rounding: "nearest" (the exact
    nearest code) or "bnb_cpu" (bitsandbytes' CPU look-up table, to get its bytes exactly).
    Worked number: block [0.5, -2.0, 1.0] has absmax 2.0, scaled [0.25, -1, 0.5], NF4 codes
    [10, 0, 12] (0.25 is nearest 0.2461, 0.5 is below the 0.4407|0.5626 midpoint 0.5017),
    dequantized [0.4922, -2.0, 0.8814].

    >>> quantize_4bit(torch.tensor([0.5, -2.0, 1.0])).codes.tolist()
    [10, 0, 12]
    """
    x = check_tensor(x, "x")
    check_choice(quant_type, "quant_type", ("nf4", "fp4"))
    check_blocksize(blocksize, "blocksize", BLOCKSIZES_4BIT)
    check_choice(dq_rule, "dq_rule", DQ_RULES)
    scaled, absmax = _block_absmax(x.reshape(-1).float(), blocksize)
    codes = _codes_4bit(scaled, quant_type)
    if not double_quant:
        return Quantized4bit(codes, absmax, x.shape, x.dtype, quant_type, blocksize)
    offset = absmax.mean()
    nested = quantize_blockwise_8bit(absmax - offset, blocksize=DQ_BLOCKSIZE, rule=dq_rule)
    return Quantized4bit(codes, nested.codes, x.shape, x.dtype, quant_type, blocksize,
                         offset=offset, nested_absmax=nested.absmax, dq_rule=dq_rule)


@dataclass(frozen=True)
class Blockwise8bit:
    """8-bit blockwise quantization with the dynamic map: codes uint8 (x's shape), absmax float32 (blocks,)."""

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    rule: str = "nearest"

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """dynamic[q] * absmax (float32), cast to `dtype` (default: the input's)."""
        code = _table("dynamic", str(self.codes.device))[0]
        values = code[self.codes.reshape(-1).long()]
        absmax = self.absmax.repeat_interleave(self.blocksize)[: values.numel()]
        return (values * absmax).view(self.shape).to(dtype or self.dtype)


@cache
def _bnb_cpu_lut(device: str) -> torch.Tensor:
    """bitsandbytes' CPU look-up table for the dynamic map, int64 (65536,): entry i is the first
    code k whose midpoint to the next code is >= -1 + 2i/65535 (so code 255 when none is)."""
    _, bounds, _ = _table("dynamic", "cpu")
    grid = -1 + 2 * torch.arange(65536, dtype=torch.float64) / 65535
    return torch.searchsorted(bounds.double(), grid).to(device)   # first bound >= grid value


def _codes_8bit(scaled: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "nearest":
        return torch.bucketize(scaled, _table("dynamic", str(scaled.device))[1], out_int32=True).to(torch.uint8)
    index = ((scaled + 1) * 0.5 * 65535 + 0.5).to(torch.int64)    # uint16 cell of [-1, 1]
    return _bnb_cpu_lut(str(scaled.device))[index].to(torch.uint8)


def quantize_blockwise_8bit(x: torch.Tensor, blocksize: int = 4096, rule: str = "nearest") -> Blockwise8bit:
    """8-bit blockwise quantization with bitsandbytes' dynamic map (256 values, dense near 0).

    x: float tensor, flattened into blocks of `blocksize`; each block scaled by its absmax.
    rule: "nearest" picks the exact nearest code (ties to the lower one); "bnb_cpu" reproduces
    bitsandbytes' CPU kernel, a 65536-cell look-up table that differs on ~0.2% of values.
    Worked number: x = [1.0, -2.0] has absmax 2.0 and scales to [0.5, -1.0]; the nearest codes are
    0.50078125 and -0.99296875 (the map has no -1), so it comes back as [1.0015625, -1.9859375].

    >>> [round(v, 7) for v in quantize_blockwise_8bit(torch.tensor([1.0, -2.0])).dequantize().tolist()]
    [1.0015625, -1.9859375]
    """
    x = check_tensor(x, "x")
    if blocksize != DQ_BLOCKSIZE:
        check_blocksize(blocksize, "blocksize", BLOCKSIZES_8BIT)
    check_choice(rule, "rule", DQ_RULES)
    scaled, absmax = _block_absmax(x.reshape(-1).float(), blocksize)
    return Blockwise8bit(_codes_8bit(scaled, rule).view(x.shape), absmax, x.shape, x.dtype, blocksize, rule)


@dataclass(frozen=True)
class AbsmaxQuantized:
    """Symmetric (absmax) quantization: q int8 in x's shape, scale float32 per group
    (one group per tensor, per index of `axis`, or per block of `blocksize`); x ~= q * scale."""

    q: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    bits: int
    axis: int | None
    blocksize: int | None

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        g = group(self.q.float(), self.axis, self.blocksize)           # (groups, group_size)
        return ungroup(g * self.scale[:, None], self.shape, self.axis).to(dtype or self.dtype)


@dataclass(frozen=True)
class ZeroPointQuantized:
    """Asymmetric (zero-point) quantization: q uint8 in x's shape, scale and zero_point float32 per
    group; x ~= (q - zero_point) * scale. zero_point is an integer unless zero_point_domain="float"."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    bits: int
    axis: int | None
    blocksize: int | None

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        g = group(self.q.float(), self.axis, self.blocksize)
        return ungroup((g - self.zero_point[:, None]) * self.scale[:, None], self.shape, self.axis).to(
            dtype or self.dtype)


def absmax_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None,
                    blocksize: int | None = None) -> AbsmaxQuantized:
    """Symmetric quantization to the integers -(2**(bits-1) - 1) .. 2**(bits-1) - 1.

    Granularity: per tensor (default), per index of `axis` (axis=0 on a (out, in) weight: one
    scale per output row), or per block of `blocksize` consecutive elements of the flattened tensor.
    scale = absmax / qmax; q = round(x / scale) (half to even). Worked number: 8 bits, absmax 2.54
    -> scale 0.02, x = 1.0 -> q = 50.

    >>> absmax_quantize(torch.tensor([1.0, -2.54])).q.tolist()
    [50, -127]
    """
    x = check_tensor(x, "x")
    check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    g = group(x.float(), axis, blocksize)                                # (groups, group_size)
    absmax = g.abs().amax(dim=1)
    check_finite(absmax)
    scale = absmax / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(g / safe[:, None]).clamp_(-qmax, qmax)
    return AbsmaxQuantized(ungroup(q, x.shape, axis).to(torch.int8), scale, x.shape, x.dtype, bits, axis, blocksize)


def zeropoint_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None, blocksize: int | None = None,
                       zero_point_domain: str = "int") -> ZeroPointQuantized:
    """Asymmetric quantization to 0 .. 2**bits - 1, using the full [min, max] range of each group.

    scale = (max - min) / (2**bits - 1); "int" domain: zero_point = round(-min / scale) with the range
    widened to include 0 (so 0.0 is exact, the textbook rule); "float" domain: zero_point = -min / scale
    unrounded and the range is exactly [min, max] (GGUF's Q4_1 style: x = q * scale + min).
    Worked number: 4 bits on [-10.2, 10.2] -> scale = (10.2 - (-10.2)) / 15 = 1.36, zero_point 8.

    >>> zeropoint_quantize(torch.tensor([-10.2, 10.2]), bits=4).zero_point.tolist()
    [8.0]
    """
    x = check_tensor(x, "x")
    check_bits(bits)
    check_choice(zero_point_domain, "zero_point_domain", ("int", "float"))
    qmax = 2 ** bits - 1
    g = group(x.float(), axis, blocksize)
    lo, hi = g.amin(dim=1), g.amax(dim=1)
    check_finite(hi - lo)
    if zero_point_domain == "int":
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = -lo / safe
    if zero_point_domain == "int":
        zp = zp.round().clamp_(0, qmax)
    q = torch.round(g / safe[:, None] + zp[:, None]).clamp_(0, qmax)
    return ZeroPointQuantized(ungroup(q, x.shape, axis).to(torch.uint8), scale, zp, x.shape, x.dtype, bits,
                              axis, blocksize)


class Int8Vectorwise(NamedTuple):
    """LLM.int8 row-wise quantization: codes int8 (rows, cols), row_absmax float32 (rows,),
    outlier_cols int64 (k,) indices of columns with any |x| >= threshold (empty when none)."""

    codes: torch.Tensor
    row_absmax: torch.Tensor
    outlier_cols: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes * row_absmax / 127; outlier columns come back as 0 (they are kept in 16-bit)."""
        return (self.codes.float() * (self.row_absmax[:, None] / 127)).to(dtype)


def int8_vectorwise(x: torch.Tensor, threshold: float = 0.0) -> Int8Vectorwise:
    """Row-wise int8 quantization with LLM.int8 outlier columns (bitsandbytes `int8_vectorwise_quant`).

    x: float tensor (rows, cols) (more dims are flattened into rows). With threshold > 0, every
    |x| >= threshold is an outlier: it is left out of its row's absmax, and its whole column is
    zeroed in the codes (LLM.int8 multiplies those columns in 16-bit). codes = round(x * scale),
    half to even, with scale = float32(127 * float32(1 / row_absmax)) exactly as bitsandbytes.
    Worked number: row [0.5, -1.27] -> absmax 1.27, codes [50, -127].

    >>> int8_vectorwise(torch.tensor([[0.5, -1.27]])).codes.tolist()
    [[50, -127]]
    """
    x = check_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions (rows, cols), got shape {tuple(x.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0 (0 disables outliers), got {threshold!r}")
    a = x.reshape(-1, x.shape[-1])                                # (rows, cols)
    outlier_cols = torch.empty(0, dtype=torch.int64, device=x.device)
    if threshold > 0:
        outliers = a.abs() >= threshold
        outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)
        a = a.masked_fill(outliers, 0)
    row_absmax = a.abs().amax(dim=1).float()
    check_finite(row_absmax)
    codes = torch.round(a * (127.0 / row_absmax).unsqueeze(1)).nan_to_num_(0).to(torch.int8)
    if a.shape[0] > 1 and outlier_cols.numel():
        codes[:, outlier_cols] = 0
    return Int8Vectorwise(codes, row_absmax, outlier_cols)
