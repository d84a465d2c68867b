"""The textbook version of every format qlearn implements: one short function a format, plain torch.

Read it top to bottom beside the lessons. Each function computes the same bytes as the fast path
(`qlearn.quantize`, `qlearn.intquant`: chunks, cell look-ups, one thread) and returns the same record;
tests/test_reference.py checks the two are equal byte for byte, and this module against bitsandbytes.
Inputs: float tensors (float32, float16, bfloat16, float64) of any shape, on any device.
"""

from __future__ import annotations

import torch

from . import codebooks
from ._checks import (
    _check_axis,
    check_bits,
    check_blocksize,
    check_choice,
    check_finite,
    check_int,
    check_tensor,
    check_threshold,
)
from .intquant import AbsmaxQuantized, Int8Vectorwise, ZeroPointQuantized
from .quantize import BLOCKSIZES_4BIT, BLOCKSIZES_8BIT, DQ_BLOCKSIZE, DQ_RULES, Blockwise8bit, Quantized4bit

__all__ = ["quantize_4bit", "double_quantize_absmax", "quantize_blockwise_8bit", "dequantize_4bit",
           "absmax_quantize", "zeropoint_quantize", "int8_vectorwise"]


def _scale_blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each block of a flat float32 tensor into [-1, 1]: (scaled (n,), absmax float32 (blocks,)).

    Full blocks multiply by the float32 reciprocal 1/absmax, as bitsandbytes does (x * (1/a) and x / a
    differ in the last bit now and then, and so, rarely, does the code). A partial last block has its own
    absmax and is divided by it. 1/absmax is taken of at least 1e-38, so an all-zero block scales to 0;
    it stores absmax 0 (an all-zero partial block stores 1e-38), again as bitsandbytes.
    """
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].reshape(-1, blocksize)                         # (blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                                   # (blocks,)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).reshape(-1)
    if full < n:                                                        # the partial last block
        tail_absmax = flat[full:].abs().amax().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_absmax.view(1)])
        scaled = torch.cat([scaled, flat[full:] / tail_absmax])
    check_finite(absmax)
    return scaled.clamp(-1, 1), absmax


def quantize_4bit(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False,
                  dq_rule: str = "nearest") -> Quantized4bit:
    """NF4 / FP4 in blocks of `blocksize` consecutive elements of the flattened `x`, packed two codes a byte.

    x: float tensor, any shape. Returns a `Quantized4bit`: packed uint8 (ceil(n / 2),), absmax float32
    (blocks,) (with `double_quant`, uint8 codes plus offset and nested_absmax: `double_quantize_absmax`).
    Each value is scaled by its block's absmax into [-1, 1] and takes the nearest code of the 16
    (on a midpoint between two codes, the lower one: `torch.bucketize` with right=False).
    Worked number: block [0.5, -2.0, 1.0] has absmax 2.0, scales to [0.25, -1.0, 0.5], NF4 codes
    [10, 0, 12] (0.5 is just below the 0.4407|0.5626 midpoint 0.5017); bytes 0xA0, 0xC7 (odd: pad code 7).

    >>> [hex(b) for b in quantize_4bit(torch.tensor([0.5, -2.0, 1.0])).packed.tolist()]
    ['0xa0', '0xc7']
    """
    x = check_tensor(x, "x")
    check_choice(quant_type, "quant_type", ("nf4", "fp4"))
    check_blocksize(blocksize, "blocksize", BLOCKSIZES_4BIT)
    check_choice(dq_rule, "dq_rule", DQ_RULES)
    code = codebooks.get_codebook(quant_type)                    # (16,) the value of each 4-bit pattern
    order = torch.argsort(code, stable=True)                     # (16,) the pattern of each rank (FP4: bit order)
    bounds = codebooks.midpoints(code[order]).to(x.device)       # (15,) between neighbouring sorted values
    scaled, absmax = _scale_blocks(x.reshape(-1).float(), blocksize)   # float64 is coded in float32
    if scaled.numel() % 2:                                       # an odd count: pad with 0.0, coded like any value
        scaled = torch.cat([scaled, scaled.new_zeros(1)])
    rank = torch.bucketize(scaled, bounds)                       # (n,) 0..15 in sorted order
    codes = order.to(x.device)[rank].to(torch.uint8)             # (n,) bit patterns (NF4: the rank itself)
    packed = (codes[0::2] << 4) | codes[1::2]                    # first element in the HIGH nibble
    if not double_quant:
        return Quantized4bit(packed, absmax, x.shape, x.dtype, quant_type, blocksize)
    absmax_codes, offset, nested_absmax = double_quantize_absmax(absmax, dq_rule)
    return Quantized4bit(packed, absmax_codes, x.shape, x.dtype, quant_type, blocksize,
                         offset=offset, nested_absmax=nested_absmax, dq_rule=dq_rule)


def double_quantize_absmax(absmax: torch.Tensor,
                           rule: str = "nearest") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the float32 absmax of a 4-bit tensor once more, to 8 bits (QLoRA's double quantization).

    absmax: float32 (blocks,). Returns (codes uint8 (blocks,), offset float32 scalar, nested_absmax
    float32 (ceil(blocks / 256),)). offset = mean(absmax); absmax - offset (both signs now) goes through
    `quantize_blockwise_8bit` in blocks of 256 with the dynamic map; `rule` as there.
    Worked number: at blocksize 64 a float32 absmax costs 32/64 = 0.5 bits a weight, its 8-bit code
    8/64 = 0.125, plus 32/(64*256) for the nested absmax: 4.5 -> 4.127 bits a weight.

    >>> codes, offset, nested = double_quantize_absmax(torch.tensor([1.0, 2.0, 3.0]))
    >>> codes.tolist(), float(offset), nested.tolist()
    ([0, 127, 255], 2.0, [1.0])
    """
    check_choice(rule, "rule", DQ_RULES)
    offset = absmax.mean()                                       # float32 scalar
    nested = quantize_blockwise_8bit(absmax - offset, blocksize=DQ_BLOCKSIZE, rule=rule)
    return nested.codes, offset, nested.absmax


def quantize_blockwise_8bit(x: torch.Tensor, blocksize: int = 4096, rule: str = "nearest") -> Blockwise8bit:
    """8-bit blockwise quantization with bitsandbytes' dynamic map (256 values, dense near 0).

    x: float tensor, any shape. Returns a `Blockwise8bit`: codes uint8 (x's shape), absmax float32 (blocks,).
    rule "nearest": scaled as in `quantize_4bit`, then the nearest code, ties to the lower (bitsandbytes'
    portable pure-torch path). rule "bnb_cpu": bitsandbytes' CPU kernel, which multiplies every block, the
    partial one too, by 1/absmax (0 * inf = NaN for an all-zero block: code 0), snaps the value to the
    nearest of 65,536 evenly spaced points in [-1, 1] and takes the point's nearest code: ~0.2% of codes
    differ from "nearest". Worked number: [1.0, -2.0] scales to [0.5, -1.0]; the nearest codes are
    0.50078125 and -0.99296875 (the map has no -1), i.e. codes 219 and 0.

    >>> quantize_blockwise_8bit(torch.tensor([1.0, -2.0])).codes.tolist()
    [219, 0]
    """
    x = check_tensor(x, "x")
    check_blocksize(blocksize, "blocksize", BLOCKSIZES_8BIT)
    check_choice(rule, "rule", DQ_RULES)
    flat = x.reshape(-1).float()                                         # (n,)
    bounds = codebooks.midpoints(codebooks.dynamic_map()).to(x.device)   # (255,) the map is sorted
    if rule == "nearest":
        scaled, absmax = _scale_blocks(flat, blocksize)
        codes = torch.bucketize(scaled, bounds)
    else:
        n = flat.numel()                                                 # padding with zeros leaves each absmax alone
        absmax = torch.nn.functional.pad(flat.abs(), (0, -n % blocksize)).view(-1, blocksize).amax(dim=1)
        check_finite(absmax)
        scaled = flat * (1.0 / absmax).repeat_interleave(blocksize)[:n]  # no clamp: 1/0 = inf
        scaled = scaled.nan_to_num(nan=-1.0).clamp(-1, 1)                # 0 * inf = NaN -> -1 -> code 0
        point = ((scaled + 1) * 0.5 * 65535 + 0.5).to(torch.int64)       # the nearest point, 0..65535
        codes = torch.bucketize(-1 + 2 * point.double() / 65535, bounds.double())
    return Blockwise8bit(codes.to(torch.uint8).view(x.shape), absmax, x.shape, x.dtype, blocksize, rule)


def dequantize_4bit(q: Quantized4bit, dtype: torch.dtype | None = None) -> torch.Tensor:
    """code[codes] * absmax of the block, in float32, then cast to `dtype` (default: the input's).

    q: a `Quantized4bit`. Returns a tensor of q.shape. With double quant the absmax is decoded first:
    dynamic[absmax code] * nested_absmax (one per 256 blocks) + offset.
    Worked number: NF4 code 12 (0.44070983) in a block of absmax 2.0 comes back as 0.8814197.

    >>> dequantize_4bit(quantize_4bit(torch.tensor([0.5, -2.0, 1.0]))).tolist()
    [0.4922246038913727, -2.0, 0.8814196586608887]
    """
    code = codebooks.get_codebook(q.quant_type).to(q.packed.device)              # (16,)
    codes = torch.stack([q.packed >> 4, q.packed & 0xF], dim=1).reshape(-1)     # high nibble first
    codes = codes[: q.shape.numel()].long()                                     # (n,) drop the padding
    absmax = q.absmax.float()                                                   # (blocks,)
    if q.offset is not None:                                                    # double quant
        dynamic = codebooks.dynamic_map().to(q.packed.device)
        nested = q.nested_absmax.repeat_interleave(DQ_BLOCKSIZE)[: absmax.numel()]
        absmax = dynamic[q.absmax.long()] * nested + q.offset
    values = code[codes] * absmax.repeat_interleave(q.blocksize)[: codes.numel()]   # (n,) float32
    return values.view(q.shape).to(dtype or q.dtype)


def _group_ids(x: torch.Tensor, axis: int | None, blocksize: int | None) -> tuple[torch.Tensor, int]:
    """(group index of every element, int64 in x's shape; number of groups): one group per tensor,
    per index along `axis` (axis=0 on a (out, in) weight: one per output row), or per block of
    `blocksize` consecutive elements of the flattened tensor (the last block may be partial)."""
    if axis is not None and blocksize is not None:
        raise ValueError(f"give axis or blocksize, not both; got axis={axis!r}, blocksize={blocksize!r}")
    if axis is not None:
        axis = _check_axis(axis, x.dim())
        index_shape = [-1 if d == axis else 1 for d in range(x.dim())]
        return torch.arange(x.shape[axis], device=x.device).view(index_shape).expand(x.shape), x.shape[axis]
    if blocksize is None:
        return torch.zeros(x.shape, dtype=torch.int64, device=x.device), 1
    check_int(blocksize, "blocksize", minimum=1)
    return torch.arange(x.numel(), device=x.device).view(x.shape) // blocksize, -(-x.numel() // blocksize)


def _per_group(values: torch.Tensor, ids: torch.Tensor, groups: int, reduce: str) -> torch.Tensor:
    """float32 (groups,): the "amax" / "amin" of the values of each group."""
    out = torch.zeros(groups, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, ids.reshape(-1), values.reshape(-1), reduce, include_self=False)


def absmax_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None,
                    blocksize: int | None = None) -> AbsmaxQuantized:
    """Symmetric integer quantization: codes round(x / scale) in -(2**(bits-1) - 1) .. 2**(bits-1) - 1.

    x: float tensor, any shape. One scale = absmax / qmax per group (per tensor, per index of `axis`,
    or per block). Returns an `AbsmaxQuantized`: codes int8 (x's shape), scale float32 (groups,).
    Rounding is half to even; an all-zero group has scale 0 and codes 0.
    Worked number: 8 bits, absmax 2.54 -> scale 2.54 / 127 = 0.02; x = 1.0 -> code 50.

    >>> absmax_quantize(torch.tensor([1.0, -2.54])).codes.tolist()
    [50, -127]
    """
    x = check_tensor(x, "x")
    check_bits(bits)
    ids, groups = _group_ids(x, axis, blocksize)
    v = x.float()                                                # float64 is coded in float32
    qmax = 2 ** (bits - 1) - 1
    absmax = _per_group(v.abs(), ids, groups, "amax")            # (groups,)
    check_finite(absmax)
    scale = absmax / qmax                                        # (groups,)
    step = torch.where(scale > 0, scale, 1.0)[ids]               # x's shape: each element's scale
    codes = torch.round(v / step).clamp(-qmax, qmax)
    return AbsmaxQuantized(codes.to(torch.int8), scale, x.shape, x.dtype, bits, axis, blocksize)


def zeropoint_quantize(x: torch.Tensor, bits: int = 8, axis: int | None = None, blocksize: int | None = None,
                       zero_point_domain: str = "int") -> ZeroPointQuantized:
    """Asymmetric integer quantization: codes in 0 .. 2**bits - 1 with scale = (max - min) / (2**bits - 1).

    x: float tensor, any shape; groups as in `absmax_quantize`.
    "int" domain: the range is widened to hold 0, zero_point = round(-min / scale), an integer, so 0.0 is
    exact; codes round(x / scale + zero_point), x ~= (code - zero_point) * scale. "float" domain: the range
    is exactly [min, max], codes round((x - min) / scale), x ~= code * scale + min (GGUF's Q4_1 style).
    Returns a `ZeroPointQuantized`: codes uint8 (x's shape), scale float32 (groups,) and zero_point
    ("int") or minimum ("float") float32 (groups,).
    Worked number: 4 bits on [-10.2, 10.2] -> scale = (10.2 - (-10.2)) / 15 = 1.36, zero_point 7.5 -> 8.

    >>> zeropoint_quantize(torch.tensor([-10.2, 0.0, 10.2]), bits=4).codes.tolist()
    [0, 8, 15]
    """
    x = check_tensor(x, "x")
    check_bits(bits)
    check_choice(zero_point_domain, "zero_point_domain", ("int", "float"))
    ids, groups = _group_ids(x, axis, blocksize)
    v = x.float()
    qmax = 2 ** bits - 1
    lo, hi = _per_group(v, ids, groups, "amin"), _per_group(v, ids, groups, "amax")   # (groups,)
    check_finite(hi - lo)
    if zero_point_domain == "float":
        scale = (hi - lo) / qmax                                 # (groups,)
        step = torch.where(scale > 0, scale, 1.0)
        codes = torch.round((v - lo[ids]) / step[ids]).clamp(0, qmax)
        return ZeroPointQuantized(codes.to(torch.uint8), scale, x.shape, x.dtype, bits, axis, blocksize,
                                  minimum=lo, zero_point_domain="float")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / qmax
    step = torch.where(scale > 0, scale, 1.0)
    zero_point = (-lo / step).round().clamp(0, qmax)
    codes = torch.round(v / step[ids] + zero_point[ids]).clamp(0, qmax)
    return ZeroPointQuantized(codes.to(torch.uint8), scale, x.shape, x.dtype, bits, axis, blocksize,
                              zero_point=zero_point)


def int8_vectorwise(x: torch.Tensor, threshold: float = 0.0) -> Int8Vectorwise:
    """LLM.int8's row-wise int8 with outlier columns (bitsandbytes `int8_vectorwise_quant`).

    x: float tensor (rows, cols) (more dims: all but the last are rows). With threshold > 0 every
    |x| >= threshold is an outlier: left out of its row's absmax, and its whole column is zeroed in the
    codes (LLM.int8 multiplies those columns in 16-bit). codes = round(x * (127 / row_absmax)), half to
    even, the scale a float32 division. Returns an `Int8Vectorwise`: codes int8 (x's shape), row_absmax
    float32 (rows,), outlier_cols int64 (k,). Worked number: row [0.5, -1.27] -> 127 / 1.27 = 100, codes [50, -127].

    >>> int8_vectorwise(torch.tensor([[0.5, -1.27], [1.0, 8.0]]), threshold=6.0).codes.tolist()
    [[50, 0], [127, 0]]
    """
    x = check_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions (rows, cols), got shape {tuple(x.shape)}")
    check_threshold(threshold)
    a = x.reshape(-1, x.shape[-1])                               # (rows, cols), the input's dtype
    outliers = a.abs() >= threshold if threshold > 0 else torch.zeros_like(a, dtype=torch.bool)
    outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)  # (k,) int64
    a = a.masked_fill(outliers, 0)                               # outliers leave their row's absmax
    row_absmax = a.abs().amax(dim=1).float()                     # (rows,)
    check_finite(row_absmax)
    codes = torch.round(a * (127.0 / row_absmax)[:, None])       # float32; an all-zero row: 0 * inf = NaN
    codes = torch.where(row_absmax[:, None] > 0, codes, 0.0).to(torch.int8)
    codes[:, outlier_cols] = 0                                   # these columns go to the 16-bit matmul
    return Int8Vectorwise(codes.view(x.shape), row_absmax, outlier_cols, x.shape, x.dtype)
