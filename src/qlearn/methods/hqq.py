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
from .rtn import GroupQuantized, check_weight

__all__ = ["HQQQuantized", "hqq", "shrink_lp", "optimize_zero"]


@dataclass(frozen=True)
class HQQQuantized(GroupQuantized):
    """RTN's record with HQQ's numbers: codes uint8 (out, in) in 0..2**bits-1; scale and zero_point float16
    (out, blocks) as the hqq library stores them (its `scale` and `zero`; the zero point is optimised, so
    fractional): W ~= (codes - zero_point) * scale in float32, block k of a row = columns k*b .. (k+1)*b - 1.
    torchao maps it to the float domain as minimum = -zero_point * scale (`qlearn.affine`)."""

    @property
    def nbytes(self) -> int:
        """bits a code plus a float16 scale and zero point a block: 4 + 32/128 = 4.25 bits/weight at 128."""
        return (self.codes.numel() * self.bits + 7) // 8 + 2 * self.scale.numel() + 2 * self.zero_point.numel()


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
    """The half-quadratic loop on blocks wg (blocks, b) with inverse scales s and zeros z (blocks, 1),
    all float32; returns the optimised zeros (blocks, 1). The same steps as the hqq library's default
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


def hqq(w: torch.Tensor, bits: int = 4, blocksize: int = 128, iters: int = 20, p: float = 0.7,
        beta: float = 10.0, kappa: float = 1.0) -> HQQQuantized:
    """HQQ-quantize weight w (out, in) in blocks of `blocksize` input columns (HQQ's group_size), no data needed.

    Start: s = (2**bits - 1) / (max - min), z = -min * s (min/max asymmetric RTN, zero not rounded);
    then `optimize_zero` (one loop over all blocks together, as hqq; when blocksize does not divide `in`,
    the short last blocks of the rows get their own loop); codes = clamp(round(w * s + z)) with the
    float32 s and z (the library's arithmetic, so its codes); stored: scale = 1 / s and the zero point z,
    in float16. iters = 0: the min/max start.

    >>> q = hqq(torch.randn(4, 64), blocksize=32)
    >>> q.codes.shape, q.scale.shape, q.bits_per_param
    (torch.Size([4, 64]), torch.Size([4, 2]), 5.0)
    """
    w = check_weight(w, blocksize)
    check_bits(bits)
    rows, cols = w.shape
    qmax = 2 ** bits - 1
    wf = w.detach().float()
    full = cols - cols % blocksize
    parts = [wf[:, :full].reshape(-1, blocksize)] if full else []           # (rows * full/b, b)
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
    return HQQQuantized(torch.cat(codes, 1), torch.cat(scales, 1), torch.cat(zeros, 1), blocksize, bits, w.dtype)
