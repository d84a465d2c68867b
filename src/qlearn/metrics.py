"""Error statistics between a tensor and its quantize-dequantize round trip."""

from __future__ import annotations

import math

import torch

__all__ = ["error_stats"]


def error_stats(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Compare `x` with its reconstruction `x_hat` (same shape, any float dtype): float32 differences, float64 sums.

    Returns mse, max_abs, mean_abs, sqnr_db = 10*log10(sum x^2 / sum (x - x_hat)^2) (inf when
    exact) and rel_err = ||x - x_hat|| / ||x||. Worked number: x = [1, -1], x_hat = [0.9, -1]
    gives mse 0.005 and sqnr_db = 10*log10(2 / 0.01) = 23.01.

    >>> round(error_stats(torch.tensor([1., -1.]), torch.tensor([.9, -1.]))["sqnr_db"], 2)
    23.01
    """
    if not isinstance(x, torch.Tensor) or not isinstance(x_hat, torch.Tensor):
        raise TypeError(f"x and x_hat must be tensors, got {type(x).__name__} and {type(x_hat).__name__}")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.numel() == 0:
        raise ValueError("x is empty: error statistics need at least one element")
    a = x.detach().float().flatten()                            # (n,) float32
    d = a - x_hat.detach().to(a.device).float().flatten()      # (n,) float32 differences
    signal = float(torch.sum(a * a, dtype=torch.float64))       # sums accumulated in float64
    noise = float(torch.sum(d * d, dtype=torch.float64))
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    return {
        "mse": noise / a.numel(),
        "max_abs": float(d.abs().max()),
        "mean_abs": float(torch.sum(d.abs(), dtype=torch.float64)) / a.numel(),
        "sqnr_db": sqnr,
        "rel_err": math.sqrt(noise / signal) if signal > 0 else math.inf,
    }
