"""FP8 weights: E4M3 / E5M2 with one scale per tensor or per 128 x 128 tile, in plain torch.

FP8 has two formats (Micikevicius et al. 2022, "FP8 Formats for Deep Learning", arXiv 2209.05433):
E4M3 (4 exponent, 3 mantissa bits, largest 448, no infinities: torch.float8_e4m3fn) for weights and
activations, E5M2 (largest 57344, IEEE-like) for gradients. A weight is scaled so its largest magnitude
lands on the format's largest value, then cast (torch's cast rounds to nearest even and saturates).

The scale is per tensor, or per 128 x 128 tile of the weight (DeepSeek-V3, arXiv 2412.19437, section
3.3; the checkpoints store the dequantization scale as ``weight_scale_inv``, one per tile, and
transformers' fine-grained FP8 reads it). The arithmetic is torchao's reference
(``torch_blockwise_scale_weight_quant``: s = float32(448 / float64(absmax)), codes = cast(x * s),
stored scale 1 / s), which tests/test_fp8.py checks byte for byte; tiles at the right or bottom edge
may be partial (576 = 4 x 128 + 64). Bits per weight: 8 + 32 / 16384 per 128 x 128 tile.
Worked number: a tile whose absmax is 0.1 gets s = 4480: 0.1 -> 448 exactly, 0.0123 -> 55.104 -> 56
(E4M3 has steps of 4 between 32 and 64), stored 56 / 4480 = 0.0125.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_choice, check_tensor

__all__ = ["FP8", "FP8_DTYPES", "quantize_fp8"]

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_TINY = 1e-12          # an all-zero tile gets absmax 1e-12 (torchao's EPS), not a division by 0


@dataclass(frozen=True)
class FP8:
    """An FP8 weight: the 8-bit values and one float32 dequantization scale per tile (or one per tensor)."""

    values: torch.Tensor       # (out, in) torch.float8_e4m3fn or float8_e5m2
    scale: torch.Tensor        # (ceil(out/t), ceil(in/t)) float32: value * scale = the weight
    tile: int | None           # 128 (DeepSeek-V3), or None: one scale for the whole tensor
    dtype: torch.dtype

    @property
    def codes(self) -> torch.Tensor:
        """The 8-bit patterns as uint8 (the input's shape)."""
        return self.values.view(torch.uint8)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        rows, cols = self.values.shape
        t_r, t_c = (rows, cols) if self.tile is None else (self.tile, self.tile)
        s = self.scale.repeat_interleave(t_r, 0)[:rows].repeat_interleave(t_c, 1)[:, :cols]   # (out, in)
        return (self.values.float() * s).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        return self.values.numel() + 4 * self.scale.numel()

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.values.numel()


def quantize_fp8(w: torch.Tensor, fmt: str = "e4m3", tile: int | None = 128) -> FP8:
    """FP8 with one scale per ``tile`` x ``tile`` block of a 2-D weight (None: one per tensor).

    w: float (out, in). Each tile: s = float32(fmax / float64(absmax)), values = cast(clamp(w * s)),
    stored scale 1 / s (float32).

    >>> q = quantize_fp8(torch.tensor([[0.1, 0.0123]]), tile=None)
    >>> q.values.float().tolist(), q.dequantize().tolist()
    ([[448.0, 56.0]], [[0.10000000149011612, 0.012500000186264515]])
    """
    w = check_tensor(w, "w")
    check_choice(fmt, "fmt", tuple(FP8_DTYPES))
    if tile is not None:
        check_choice(tile, "tile", (32, 64, 128, 256))
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D weight (out, in); got shape {tuple(w.shape)}")
    dt = FP8_DTYPES[fmt]
    fmax = torch.finfo(dt).max
    rows, cols = w.shape
    t_r, t_c = (rows, cols) if tile is None else (tile, tile)
    n_r, n_c = -(-rows // t_r), -(-cols // t_c)
    padded = torch.zeros(n_r * t_r, n_c * t_c, dtype=torch.float32, device=w.device)
    padded[:rows, :cols] = w.float()                                         # zeros do not change a tile's absmax
    tiles = padded.reshape(n_r, t_r, n_c, t_c)                               # (tile row, r, tile col, c)
    absmax = tiles.abs().amax(dim=(1, 3)).double().clamp(min=_TINY)          # (n_r, n_c) float64
    s = (fmax / absmax).float()                                              # float32
    scaled = tiles * s[:, None, :, None]
    values = scaled.clamp(-fmax, fmax).to(dt).reshape(n_r * t_r, n_c * t_c)[:rows, :cols].contiguous()
    return FP8(values, 1.0 / s, tile, w.dtype)
