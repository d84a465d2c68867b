"""HQQ, Half-Quadratic Quantization (Badri & Shaji 2023, mobiusml.github.io/hqq_blog): choose each
group's zero point with no calibration data, by minimising an lp-norm (p < 1) of the weight error.

Round-to-nearest picks zero and scale from the group's min and max, which lets one outlier set the
grid. HQQ keeps the scale and solves  min_z ||W - (Q(W; z) - z) / s||_p^p  with p = 0.7: a sparse
error is cheap, so a few badly rounded outliers are accepted if the rest fit better. Half-quadratic
splitting adds an auxiliary error variable E and alternates two closed-form steps (~20 times):

    E <- shrink_p(W - W_r, beta)                    (generalised soft-threshold: the lp proximal step)
    z <- mean(Q - (W - E) * s)  over the group        (the least-squares zero for that E)

with W_r = (Q - z) / s and Q = clamp(round(W * s + z), 0, 2**bits - 1) (the blog grows beta by kappa
each step; the library's default solver keeps it fixed, and so does `hqq` here by default). s is
HQQ's inverse scale (levels per unit); the stored scale is 1 / s. The loop stops early when the mean
|W - W_r| stops falling (as the hqq library does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_bits
from .rtn import check_weight

__all__ = ["HQQQuantized", "hqq", "shrink_lp", "optimize_zero"]


@dataclass(frozen=True)
class HQQQuantized:
    """codes uint8 (out, in) in 0..2**bits-1; scale and zero float16 (out, groups) as the hqq library
    stores them; W ~= (codes - zero) * scale, group k of a row = columns k*g .. (k+1)*g - 1."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int
    bits: int
    dtype: torch.dtype

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(codes - zero) * scale in float32 per group, cast to `dtype` (default: the input's), (out, in)."""
        idx = torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size
        w = (self.codes.float() - self.zero.float()[:, idx]) * self.scale.float()[:, idx]
        return w.to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """bits a code plus a float16 scale and zero a group: 4 + 32/128 = 4.25 bits/weight at g = 128."""
        return (self.codes.numel() * self.bits + 7) // 8 + 2 * self.scale.numel() + 2 * self.zero.numel()

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.codes.numel()


def shrink_lp(x: torch.Tensor, beta: float, p: float = 0.7) -> torch.Tensor:
    """Generalised soft-threshold: sign(x) * relu(|x| - |x|**(p-1) / beta) (p = 1: plain soft-threshold).

    Worked number: x = 1, beta = 10, p = 0.7 -> 1 - 1/10 = 0.9. (x = 0 gives 0: |0|**-0.3 is inf.)

    >>> round(shrink_lp(torch.tensor([1.0]), 10.0).item(), 4)
    0.9
    """
    a = x.abs()
    cut = 1.0 / beta if p == 1 else (1.0 / beta) * a.pow(p - 1)
    return (a - cut).clamp_min(0.0) * torch.sign(x)


def optimize_zero(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int, p: float = 0.7, beta: float = 10.0,
                  kappa: float = 1.0, iters: int = 20) -> torch.Tensor:
    """The half-quadratic loop on groups wg (groups, g) with inverse scales s and zeros z (groups, 1),
    all float32; returns the optimised zeros (groups, 1). The same steps as the hqq library's default
    `optimize_weights_proximal_legacy` (tested equal to it): that one keeps beta fixed (kappa = 1);
    the blog's schedule grows it by kappa = 1.01 a step."""
    best = float("inf")
    for _ in range(iters):
        q = torch.round(wg * s + z).clamp(0, qmax)
        w_r = (q - z) / s
        e = shrink_lp(wg - w_r, beta, p)
        z = torch.mean(q - (wg - e) * s, dim=1, keepdim=True)
        beta *= kappa
        err = float(torch.abs(wg - w_r).mean())
        if err < best:
            best = err
        else:
            break
    return z


def _init(wg: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """min/max start as hqq: s = qmax / (max - min) (1 where max - min <= 1e-4, at most 2e4), z = -min * s."""
    lo, hi = wg.amin(dim=1, keepdim=True), wg.amax(dim=1, keepdim=True)
    denom = hi - lo
    s = torch.where(denom.abs() <= 1e-4, torch.ones_like(denom), qmax / denom).clamp(max=2e4)
    return s, -lo * s


def hqq(w: torch.Tensor, bits: int = 4, group_size: int = 128, iters: int = 20, p: float = 0.7,
        beta: float = 10.0, kappa: float = 1.0) -> HQQQuantized:
    """HQQ-quantize weight w (out, in) in groups of `group_size` input columns, no data needed.

    Start: s = (2**bits - 1) / (max - min), z = -min * s (min/max asymmetric RTN, zero not rounded);
    then `optimize_zero` (one loop over all groups together, as hqq; when g does not divide `in`,
    the short last groups of the rows get their own loop); codes = clamp(round(w * s + z)) with the
    float32 s and z; stored: scale = 1 / s and zero, in float16. iters = 0: the min/max start.

    >>> q = hqq(torch.randn(4, 64), group_size=32)
    >>> q.codes.shape, q.scale.shape, q.bits_per_param
    (torch.Size([4, 64]), torch.Size([4, 2]), 5.0)
    """
    w = check_weight(w, group_size)
    check_bits(bits)
    rows, cols = w.shape
    qmax = 2 ** bits - 1
    wf = w.detach().float()
    full = cols - cols % group_size
    parts = [wf[:, :full].reshape(-1, group_size)] if full else []          # (rows * full/g, g)
    if full < cols:
        parts.append(wf[:, full:])                                          # (rows, cols - full)
    codes, scales, zeros = [], [], []
    for wg in parts:
        s, z = _init(wg, qmax)
        if iters > 0:
            z = optimize_zero(wg, s, z, qmax, p, beta, kappa, iters)
        codes.append(torch.round(wg * s + z).clamp(0, qmax).to(torch.uint8).view(rows, -1))
        scales.append((1 / s).to(torch.float16).view(rows, -1))
        zeros.append(z.to(torch.float16).view(rows, -1))
    return HQQQuantized(torch.cat(codes, 1), torch.cat(scales, 1), torch.cat(zeros, 1), group_size, bits, w.dtype)
