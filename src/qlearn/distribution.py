"""How a tensor's values are spread: their range, a histogram over a range, a fixed random sample.

A histogram counts with `torch.histc` on the whole tensor, so 1M values count in a few ms; past
2**18 values it counts every k-th value and multiplies the counts by k (the shape is the same to
the eye). A sample takes the same positions for every tensor of the same size, so the sample of
`x` and the sample of its error line up value by value.
"""

from __future__ import annotations

import torch

__all__ = ["value_range", "histogram", "sample", "SAMPLE"]

SAMPLE = 2 ** 18   # histograms of bigger tensors count every k-th value (times k)


def value_range(*xs: torch.Tensor, pad: float = 0.02) -> tuple[float, float]:
    """(lo, hi) over all values of the tensors `xs`, widened by `pad` of the span on each side;
    a constant gets +-(pad * 2e-6) around it. Worked number: values 0..1 with pad 0.02 give
    (-0.02, 1.02).

    >>> value_range(torch.tensor([0., 1.]), torch.tensor([0.5]))
    (-0.02, 1.02)
    """
    if not xs:
        raise TypeError("value_range needs at least one tensor")
    bounds = [torch.aminmax(x.detach().float().reshape(-1)) for x in xs]
    lo, hi = min(float(b.min) for b in bounds), max(float(b.max) for b in bounds)
    span = hi - lo if hi > lo else 2e-6
    return lo - pad * span, hi + pad * span


def histogram(x: torch.Tensor, bins: int, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of `x` in `bins` equal bins over [lo, hi], float32 (bins,) on the CPU, and the bin
    edges, float64 (bins + 1,); values outside are dropped. Any dtype (counted as float32).

    Past 2**18 values every k-th value is counted and the counts multiplied by k (a 1M-value
    weight: every 4th). Worked number: [0, 0.5, 1] in 2 bins over [0, 1] gives counts [1, 2]
    (0.5 sits on the edge and goes up, 1.0 is in the last bin) and edges [0, 0.5, 1].

    >>> counts, edges = histogram(torch.tensor([0., 0.5, 1.]), 2, 0., 1.)
    >>> counts.tolist(), edges.tolist()
    ([1.0, 2.0], [0.0, 0.5, 1.0])
    """
    flat = x.detach().reshape(-1)
    step = -(-flat.numel() // SAMPLE)
    counts = torch.histc(flat[::step].float(), bins=bins, min=lo, max=hi) * step
    edges = torch.arange(bins + 1, dtype=torch.float64) * ((hi - lo) / bins) + lo   # lo + i * width
    edges[-1] = hi
    return counts.cpu(), edges


def sample(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """`k` values of `x` (flattened) at random positions, float32 (min(k, n),) on the CPU.

    The positions depend only on n = x.numel() and `seed`, so ``sample(x, k)`` and
    ``sample(x_hat - x, k)`` are the same elements. Worked number: k >= n gives all n values in
    a random order.

    >>> sorted(sample(torch.tensor([3., 1., 2.]), 5).tolist())
    [1.0, 2.0, 3.0]
    """
    flat = x.detach().reshape(-1)
    idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:k]   # (k,)
    return flat[idx.to(flat.device)].float().cpu()
