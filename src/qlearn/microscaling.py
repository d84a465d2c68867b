"""Block-scaled FP4: MXFP4 (OCP Microscaling) and NVFP4 (NVIDIA), in plain torch.

Both store each weight as an E2M1 float (1 sign, 2 exponent, 1 mantissa bit: magnitudes 0, 0.5, 1, 1.5,
2, 3, 4, 6) and share one scale per small block; they differ in the block and the scale:

- **MXFP4** (OCP Microscaling Formats v1.0, 2023): blocks of 32, one E8M0 scale each: a bare power of
  two, 8 bits of exponent and nothing else. The scale is 2^(floor(log2(absmax)) - 2): the largest
  power of two not above absmax, over 4 (= 2^2, the largest power of two E2M1 holds), so the block's
  largest value lands in [4, 8) and values above 6 saturate. 4 + 8/32 = 4.25 bits per weight.
- **NVFP4** (NVIDIA, Blackwell): blocks of 16, one E4M3 scale each (an 8-bit float with 3 mantissa
  bits: finer than a power of two) plus one float32 scale for the whole tensor, so the E4M3 scales use
  their range. Block scale = absmax / 6 / tensor_scale, rounded to E4M3; tensor scale = amax / (448 * 6).
  4 + 8/16 = 4.5 bits per weight (+ 32 bits per tensor).

The arithmetic follows torchao's reference (``torchao/prototype/mx_formats``: ``to_mx`` with the FLOOR
scale and ``nvfp4_quantize`` with a per-tensor scale), which tests/test_microscaling.py checks byte for
byte. E2M1 rounding is to nearest, ties to the even code; the elements are packed two per byte, the
first in the low nibble (torchao's order; bitsandbytes puts the first in the high nibble).
Worked number: a block whose absmax is 0.05 gets the MX scale 2^(floor(log2 0.05) - 2) = 2^-7, so
0.05 / 2^-7 = 6.4 saturates to 6 (stored 0.046875), while NVFP4 (tensor amax 0.05) stores it exactly
to within E4M3's rounding of 0.05 / 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_choice, check_tensor

__all__ = ["E2M1_VALUES", "e2m1_codes", "e2m1_values", "MXFP4", "NVFP4", "quantize_mxfp4", "quantize_nvfp4"]

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])   # magnitude of codes 0..7; bit 3 = sign
E2M1_MAX = 6.0
E4M3_MAX = 448.0
_MIDPOINTS = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2                 # (7,) 0.25, 0.75, ..., 5.0


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """float32 -> 4-bit E2M1 codes (uint8, same shape): nearest magnitude, ties to the even code, values
    above 6 saturate, and the sign bit (8) is set for every negative input, also when it rounds to 0.

    >>> e2m1_codes(torch.tensor([0.25, 0.75, -2.6, 7.0, -0.1])).tolist()
    [0, 2, 13, 7, 8]
    """
    a = x.abs().float()
    mids = _MIDPOINTS.to(a.device)
    below = torch.bucketize(a, mids, right=False)       # midpoints < a: the code when a tie goes down
    above = torch.bucketize(a, mids, right=True)        # midpoints <= a: the code when a tie goes up
    code = torch.where(above % 2 == 0, above, below)    # they differ only on a tie: keep the even one
    return (code + 8 * (x < 0)).to(torch.uint8)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes -> float32 values (code 8 is -0.0).

    >>> e2m1_values(torch.tensor([0, 2, 13, 7], dtype=torch.uint8)).tolist()
    [0.0, 1.0, -3.0, 6.0]
    """
    mag = E2M1_VALUES.to(codes.device)[(codes & 7).long()]
    return torch.where(codes >= 8, -mag, mag)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """(..., n) 4-bit codes -> (..., n/2) bytes, the first code of each pair in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def _blocks(w: torch.Tensor, blocksize: int, name: str) -> torch.Tensor:
    """(..., k) -> (..., k / blocksize, blocksize) float32: blocks along the last dim (as the formats define)."""
    w = check_tensor(w, name)
    if w.dim() < 1 or w.shape[-1] % blocksize:
        raise ValueError(f"{name}'s last dimension must be a multiple of {blocksize}; got shape {tuple(w.shape)}")
    return w.float().reshape(*w.shape[:-1], w.shape[-1] // blocksize, blocksize)


@dataclass(frozen=True)
class MXFP4:
    """An MXFP4 tensor: E2M1 codes two per byte and one E8M0 scale (a biased exponent, uint8) per 32 values."""

    packed: torch.Tensor          # (..., k/2) uint8
    scale_e8m0: torch.Tensor      # (..., k/32) uint8: the scale is 2^(scale_e8m0 - 127)
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 32

    @property
    def codes(self) -> torch.Tensor:
        """The 4-bit codes (uint8, the input's shape)."""
        return _unpack(self.packed).reshape(self.shape)

    @property
    def scale(self) -> torch.Tensor:
        """The power-of-two scales as float32 (..., k/32); 2^-127 is clamped to float32's smallest normal."""
        s = (self.scale_e8m0.to(torch.int32) << 23).view(torch.float32)
        return s.clamp(min=torch.finfo(torch.float32).tiny)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        vals = e2m1_values(self.codes).reshape(*self.shape[:-1], -1, self.blocksize)   # (..., blocks, 32)
        return (vals * self.scale.unsqueeze(-1)).reshape(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scale_e8m0.numel()

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.shape.numel()


def quantize_mxfp4(w: torch.Tensor, blocksize: int = 32) -> MXFP4:
    """MXFP4 (OCP MX v1.0): blocks of 32 along the last dim, scale 2^(floor(log2 absmax) - 2) as E8M0.

    w: float tensor (..., k), k a multiple of 32. An all-zero block gets the smallest scale.

    >>> q = quantize_mxfp4(torch.linspace(-1, 1, 32))
    >>> q.scale.item(), q.bits_per_param
    (0.25, 4.25)
    """
    check_choice(blocksize, "blocksize", (32,))
    x = _blocks(w, blocksize, "w")                                          # (..., blocks, 32)
    absmax = x.abs().amax(dim=-1)                                           # (..., blocks)
    exponent = ((absmax.view(torch.int32) >> 23) & 255) - 127               # floor(log2 absmax), from the bits
    biased = (exponent - 2).clamp(-127, 128) + 127                          # E8M0: exponent + 127, 2 = log2 4
    biased = torch.where(absmax.isnan(), torch.full_like(biased, 255), biased).to(torch.uint8)
    scale = (biased.to(torch.int32) << 23).view(torch.float32).clamp(min=torch.finfo(torch.float32).tiny)
    codes = e2m1_codes(x / scale.unsqueeze(-1))                             # (..., blocks, 32)
    packed = _pack(codes.reshape(*w.shape[:-1], -1))
    return MXFP4(packed, biased, w.shape, w.dtype, blocksize)


@dataclass(frozen=True)
class NVFP4:
    """An NVFP4 tensor: E2M1 codes two per byte, one E4M3 scale per 16 values, one float32 tensor scale."""

    packed: torch.Tensor          # (..., k/2) uint8
    block_scale: torch.Tensor     # (..., k/16) torch.float8_e4m3fn
    tensor_scale: torch.Tensor    # () float32
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 16

    @property
    def codes(self) -> torch.Tensor:
        """The 4-bit codes (uint8, the input's shape)."""
        return _unpack(self.packed).reshape(self.shape)

    @property
    def scale(self) -> torch.Tensor:
        """Each block's scale in float32 (..., k/16): its E4M3 scale times the tensor scale."""
        return self.block_scale.float() * self.tensor_scale

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        vals = e2m1_values(self.codes).reshape(*self.shape[:-1], -1, self.blocksize)   # (..., blocks, 16)
        return (vals * self.scale.unsqueeze(-1)).reshape(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.block_scale.numel() + 4

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.shape.numel()


def quantize_nvfp4(w: torch.Tensor, blocksize: int = 16) -> NVFP4:
    """NVFP4: blocks of 16 along the last dim, E4M3 block scales under one float32 tensor scale.

    tensor_scale = amax(|w|) / (448 * 6); block scale = E4M3(absmax_block / 6 / tensor_scale); elements
    = E2M1(x * ((1 / tensor_scale) / block_scale)) (torchao's order of operations, saturating at 6).

    >>> q = quantize_nvfp4(torch.linspace(-1, 1, 32))
    >>> q.block_scale.float().tolist(), round(q.bits_per_param, 3)
    ([448.0, 448.0], 5.5)
    """
    check_choice(blocksize, "blocksize", (16,))
    x = _blocks(w, blocksize, "w")                                          # (..., blocks, 16)
    tensor_scale = x.abs().amax() / (E4M3_MAX * E2M1_MAX)                   # () float32
    block = x.abs().amax(dim=-1) / E2M1_MAX / tensor_scale                  # (..., blocks), up to 448
    eps = torch.finfo(torch.float8_e4m3fn).tiny                             # 2^-6, the smallest normal
    block_scale = block.clamp(eps, E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = (1.0 / tensor_scale) / block_scale.float()                 # (..., blocks)
    scaled = (x * reciprocal.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX)
    packed = _pack(e2m1_codes(scaled).reshape(*w.shape[:-1], -1))
    return NVFP4(packed, block_scale, tensor_scale, w.shape, w.dtype, blocksize)
