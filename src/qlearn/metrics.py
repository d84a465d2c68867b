"""Errors between a tensor and its quantize-dequantize round trip: per value, summarized, per layer."""

from __future__ import annotations

import math

import torch

__all__ = ["errors", "error_stats", "sqnr_per_layer"]


def errors(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The error of every value, x_hat - x, float32 in x's shape and on x's device.
    Worked number: x = [1, -1], x_hat = [0.9, -1] gives [-0.1, 0.0] (to float32 rounding).

    >>> [round(v, 4) for v in errors(torch.tensor([1., -1.]), torch.tensor([.9, -1.])).tolist()]
    [-0.1, 0.0]
    """
    if not isinstance(x, torch.Tensor) or not isinstance(x_hat, torch.Tensor):
        raise TypeError(f"x and x_hat must be tensors, got {type(x).__name__} and {type(x_hat).__name__}")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    return x_hat.detach().to(x.device).float() - x.detach().float()


def error_stats(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Compare `x` with its reconstruction `x_hat` (same shape, any float dtype): float32 differences, float64 sums.

    Returns mse, max_abs, mean_abs, sqnr_db = 10*log10(sum x^2 / sum (x - x_hat)^2) (inf when
    exact) and rel_err = ||x - x_hat|| / ||x||. Worked number: x = [1, -1], x_hat = [0.9, -1]
    gives mse 0.005 and sqnr_db = 10*log10(2 / 0.01) = 23.01.

    >>> round(error_stats(torch.tensor([1., -1.]), torch.tensor([.9, -1.]))["sqnr_db"], 2)
    23.01
    """
    d = errors(x, x_hat).flatten()                               # (n,) float32 (checks the input)
    if x.numel() == 0:
        raise ValueError("x is empty: error statistics need at least one element")
    a = x.detach().float().flatten()                            # (n,) float32
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


def sqnr_per_layer(named_weights, quantize) -> dict[str, float]:
    """SQNR (dB) of every weight after `quantize(w).dequantize(float32)`: {name: dB}, in order.

    named_weights: (name, weight) pairs, e.g. ``ql.sources.linear_layers(model)`` (one weight at
    a time is held); quantize: weight -> a quantization result, e.g.
    ``lambda w: ql.quantize_4bit(w, "nf4", 64)``. Worked number: absmax 8-bit of [1, -1] is exact,
    so its SQNR is inf.

    >>> import qlearn as ql
    >>> sqnr_per_layer([("fc", torch.tensor([1., -1.]))], lambda w: ql.absmax_quantize(w, 8))
    {'fc': inf}
    """
    return {name: error_stats(w, quantize(w).dequantize(torch.float32))["sqnr_db"] for name, w in named_weights}
