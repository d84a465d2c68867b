"""Four 4-bit formats on the same weights at (nearly) the same bits: where each one puts its levels.

Every one of them stores a 4-bit code per weight and a scale per block; the weight comes back as
``codebook[code] * scale``. They differ in the code book and in the block's scale:

=========  ==========================================  ===========================  =====
format     code book (16 codes)                        scale, per block of           bits
=========  ==========================================  ===========================  =====
MXFP4      E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and signs  32: a power of two (E8M0)      4.25
NVFP4      E2M1                                        16: an E4M3 float x a float32  4.5
NF4        normal quantiles in [-1, 1]                 64: the float32 absmax         4.5
int4       -7..7 (absmax leaves code -8 unused)        64: float32 absmax / 7         4.5
=========  ==========================================  ===========================  =====

`grids(w)` quantizes a weight in all four once; ``Grid.levels(index)`` gives the values one weight
could have taken, so an explorer can draw a block's grids side by side.
Worked number: a block whose absmax is 0.05 has MXFP4 levels spaced 2^-7 * 0.5 = 0.0039 near zero
and at most 6 * 2^-7 = 0.047 (0.05 saturates), NF4 levels from -0.05 to 0.05 (the absmax exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_tensor
from .codebooks import NF4
from .intquant import absmax_quantize
from .microscaling import e2m1_values, quantize_mxfp4, quantize_nvfp4
from .quantize import quantize_4bit

__all__ = ["FORMATS", "Grid", "grids"]

FORMATS = ("MXFP4", "NVFP4", "NF4", "int4")
_BLOCK = {"MXFP4": 32, "NVFP4": 16, "NF4": 64, "int4": 64}


@dataclass(frozen=True)
class Grid:
    """One format on one weight: codes (the weight's shape, index into `codebook`), the code book (16,
    or 15 for int4) float32, each weight's scale (the weight's shape, float32) and the stored bits per weight."""

    name: str
    codes: torch.Tensor
    codebook: torch.Tensor
    scale: torch.Tensor
    bits_per_param: float

    @property
    def blocksize(self) -> int:
        return _BLOCK[self.name]

    def dequantize(self) -> torch.Tensor:
        """codebook[codes] * scale, float32, the weight's shape."""
        return self.codebook[self.codes.long()] * self.scale

    def levels(self, index: tuple[int, ...]) -> torch.Tensor:
        """The sorted distinct values the weight at `index` could have been given (float32)."""
        return (self.codebook * self.scale[index]).unique()


def grids(w: torch.Tensor) -> dict[str, Grid]:
    """{format: Grid} for a 2-D float weight whose rows are a multiple of 64 long (576 and 1536 are).

    >>> g = grids(torch.linspace(-1, 1, 64).reshape(1, 64))
    >>> [round(g[f].bits_per_param, 2) for f in FORMATS]
    [4.25, 5.0, 4.5, 4.5]
    """
    w = check_tensor(w, "w").float()
    if w.dim() != 2 or w.shape[1] % 64:
        raise ValueError(f"w must be 2-D with rows a multiple of 64 long; got shape {tuple(w.shape)}")
    mx, nv = quantize_mxfp4(w), quantize_nvfp4(w)
    e2m1 = e2m1_values(torch.arange(16, dtype=torch.uint8))
    nf4 = quantize_4bit(w, "nf4", 64, rule="bnb_cpu")
    i4 = absmax_quantize(w, bits=4, blocksize=64)
    out = {
        "MXFP4": Grid("MXFP4", mx.codes, e2m1, mx.scale.repeat_interleave(32, -1), mx.bits_per_param),
        "NVFP4": Grid("NVFP4", nv.codes, e2m1, nv.scale.repeat_interleave(16, -1), nv.bits_per_param),
        "NF4": Grid("NF4", nf4.codes.reshape(w.shape), NF4.clone(),
                    nf4.absmax.repeat_interleave(64)[: w.numel()].reshape(w.shape), nf4.bits_per_param),
        "int4": Grid("int4", i4.codes.reshape(w.shape).long() + 7, torch.arange(-7, 8).float(),
                     i4.scale.repeat_interleave(64)[: w.numel()].reshape(w.shape), i4.bits_per_param),
    }
    return out
