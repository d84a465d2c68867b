"""AWQ (Lin et al. 2023, arXiv 2306.00978): protect the input channels that carry large activations
by scaling them up before round-to-nearest.

Multiplying input column j of W by s_j > 1 (and dividing the activation x_j by s_j, which a real
model folds into the previous layer or norm) leaves the layer's output unchanged but makes column
j's relative rounding error smaller: the group's scale barely moves while w_j grows. AWQ sets
s = mean|x|^alpha (normalised so sqrt(max s * min s) = 1) and picks alpha from a grid on [0, 1)
by measuring the layer's output error on calibration inputs. alpha = 0 is plain RTN, so on the
calibration inputs the search can only match or beat RTN.

Fake quantization here: W_hat = Q(W * s) / s, with Q = `rtn` (same grid, same blocksize).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .rtn import GroupQuantized, check_weight, rtn

__all__ = ["AWQQuantized", "awq", "awq_scales"]


@dataclass(frozen=True)
class AWQQuantized:
    """RTN of W * s (`inner`, codes (out, in)) and the per-input-channel scale s float32 (in,);
    W ~= inner.dequantize() / s (inner.dtype is the input's). alpha: the exponent the search chose; errors:
    output MSE per alpha."""

    inner: GroupQuantized
    in_scale: torch.Tensor
    alpha: float
    errors: tuple

    @property
    def codes(self) -> torch.Tensor:
        return self.inner.codes

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """inner.dequantize() / s in float32, cast to `dtype` (default: the input's), shape (out, in)."""
        return (self.inner.dequantize(torch.float32) / self.in_scale).to(dtype or self.inner.dtype)

    @property
    def nbytes(self) -> int:
        """RTN's bytes plus s as float16 (2 bytes an input channel; 0 if folded into the previous layer)."""
        return self.inner.nbytes + 2 * self.in_scale.numel()

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.inner.codes.numel()


def awq_scales(x_mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x| ** alpha, normalised so that sqrt(max(s) * min(s)) = 1: float32 (in,).

    Worked number: mean|x| = [1, 4], alpha = 0.5 -> [1, 2] / sqrt(2) = [0.7071, 1.4142].

    >>> [round(v, 4) for v in awq_scales(torch.tensor([1.0, 4.0]), 0.5).tolist()]
    [0.7071, 1.4142]
    """
    s = x_mean_abs.float().clamp(min=1e-4) ** alpha
    return s / torch.sqrt(s.max() * s.min())


def awq(w: torch.Tensor, x: torch.Tensor, bits: int = 4, blocksize: int | None = 128, symmetric: bool = True,
        n_grid: int = 20, x_mean_abs: torch.Tensor | None = None) -> AWQQuantized:
    """Search alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid} minimising ||x W^T - x W_hat^T||^2, then RTN.

    w: float (out, in); x: float (tokens, in) calibration inputs of this layer (a few hundred rows
    are enough); x_mean_abs: mean |x| per input channel (in,), default from x (pass the statistic
    of more tokens than x holds if you have it). Runs on w's device (x is moved there).
    Worked number: alpha = 0 gives exactly `rtn(w)`.

    >>> w, x = torch.randn(8, 16), torch.randn(32, 16)
    >>> torch.equal(awq(w, x, blocksize=8, n_grid=1).dequantize(), rtn(w, blocksize=8).dequantize())
    True
    """
    w = check_weight(w, blocksize)
    x = x.reshape(-1, w.shape[1]).float().to(w.device)                   # the work runs on w's device
    mean_abs = x.abs().mean(dim=0) if x_mean_abs is None else x_mean_abs.float().to(w.device)
    wf = w.detach().float()
    y = x @ wf.T                                                    # (tokens, out) the exact output
    best = None
    errors = []
    for k in range(n_grid):
        alpha = k / n_grid
        s = awq_scales(mean_abs, alpha) if alpha > 0 else torch.ones_like(mean_abs)
        q = rtn(wf * s, bits, blocksize, symmetric)
        err = float(((x @ (q.dequantize(torch.float32) / s).T - y) ** 2).mean())
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, alpha, q, s)
    _, alpha, q, s = best
    return AWQQuantized(dataclasses.replace(q, dtype=w.dtype), s, alpha, tuple(errors))
