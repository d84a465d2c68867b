"""NF4 bins: where the 16 values come from and why they fit normal-shaped weights.

`NF4View` draws (a) the standard normal CDF with the probabilities whose quantiles become the
16 NF4 values, (b) a tensor's block-normalized values (x / block absmax, in [-1, 1]) with the
NF4 bin edges, (c) the share of values that land on each level for NF4, uniform INT4 (absmax,
levels -7..7) and FP4. A level that gets ~1/16 of the weights carries the most information;
`occupancy` and `entropy_bits` give those numbers (4 bits is the best a 16-level code can do).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from .. import codebooks
from ..quantize import AbsmaxQuantized, Quantized4bit
from ._base import COLORS, histogram, new_figure, set_ylim_to

__all__ = ["NF4View", "nf4_construction", "occupancy", "entropy_bits"]


def nf4_construction(offset: float = codebooks.NF4_OFFSET) -> dict[str, np.ndarray]:
    """The pieces of `codebooks.nf4_from_normal`: probabilities p (15,), their normal quantiles
    z (15,) and the code book values z / max(z) (16, with the exact 0), all sorted.
    Worked number: the top probability is the offset 0.9677, z = 1.848, value 1.0.

    >>> round(float(nf4_construction()["z"].max()), 3)
    1.848
    """
    pos = torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1]    # (8,) probabilities
    neg = torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1]    # (7,)
    p = torch.cat([pos, 1 - neg]).sort().values
    z = torch.special.ndtri(p.double()).float()
    return {"p": p.numpy(), "z": z.numpy(), "values": codebooks.nf4_from_normal(offset).numpy()}


def occupancy(result) -> tuple[np.ndarray, np.ndarray]:
    """(level values on the [-1, 1] scale, share of elements on each), sorted by value.

    Works for a `Quantized4bit` (NF4 / FP4: FP4's +0 and -0 codes are merged into one level)
    and a per-block `AbsmaxQuantized` (levels q / qmax). Shares sum to 1.
    Worked number: NF4 on normal weights in blocks of 64 puts 4-9% on each level, 1/16 = 6.25%.

    >>> import qlearn as ql
    >>> levels, share = occupancy(ql.quantize_4bit(torch.randn(4096)))
    >>> (len(levels), round(float(share.sum()), 6))
    (16, 1.0)
    """
    if isinstance(result, Quantized4bit):
        code = codebooks.get_codebook(result.quant_type)
        counts = torch.bincount(result.codes.reshape(-1).long().cpu(), minlength=16).double()
        values, inverse = torch.unique(code, return_inverse=True)         # merges FP4's +-0
        merged = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, counts)
    elif isinstance(result, AbsmaxQuantized):
        qmax = 2 ** (result.bits - 1) - 1
        merged = torch.bincount(result.codes.reshape(-1).long().cpu() + qmax, minlength=2 * qmax + 1).double()
        values = torch.arange(-qmax, qmax + 1, dtype=torch.float32) / qmax
    else:
        raise TypeError(f"result must be a Quantized4bit or AbsmaxQuantized, got {type(result).__name__}")
    return values.numpy(), (merged / merged.sum()).numpy()


def entropy_bits(share: np.ndarray) -> float:
    """Shannon entropy of a level distribution in bits: 4.0 for 16 equally used levels.

    >>> entropy_bits(np.full(16, 1 / 16))
    4.0
    """
    p = np.asarray(share, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


class NF4View:
    """Three panels: NF4 from the normal CDF, normalized block values with NF4 bins, and level
    occupancy for NF4 vs INT4 vs FP4. `shares` holds the last {name: (levels, share)}."""

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(3)
        a, b, c = self.axes
        zz = np.linspace(-2.6, 2.6, 200)
        a.plot(zz, 0.5 * (1 + torch.erf(torch.from_numpy(zz) / 2 ** 0.5).numpy()), color="black", lw=1.2)
        self.guides = a.add_collection(LineCollection([], colors=COLORS["muted"], linewidths=0.6,
                                                      linestyles=":"))
        self.points = a.scatter([], [], s=14, color=COLORS["nf4"], zorder=3, label="quantile -> NF4 value")
        a.set_xlim(-2.6, 2.6)
        a.set_ylim(0, 1.02)
        a.set_xlabel("z (standard normal)")
        a.set_ylabel("P(Z <= z)")
        a.legend(loc="lower right", frameon=False)
        self.hist = b.stairs([0], np.linspace(-1, 1, 2), fill=True, color=COLORS["orig"], alpha=0.5)
        self.edges = b.add_collection(LineCollection(
            [], colors=COLORS["nf4"], linewidths=0.8,
            transform=blended_transform_factory(b.transData, b.transAxes)))
        b.set_xlim(-1.05, 1.05)
        b.set_xlabel("value / block absmax")
        b.set_ylabel("count")
        self.lines = {}
        for name in ("nf4", "int4", "fp4"):
            (self.lines[name],) = c.plot([], [], marker="o", ms=3.5, lw=1.2, color=COLORS[name])
        c.axhline(100 / 16, color="black", lw=0.8, ls="--", label="1/16 (even)")
        c.set_xlim(-1.08, 1.08)
        c.set_xlabel("level (scaled to [-1, 1])")
        c.set_ylabel("% of weights")
        self.shares: dict = {}

    def update(self, x: torch.Tensor, results: dict, offset: float = codebooks.NF4_OFFSET) -> NF4View:
        """results: {"nf4": Quantized4bit, "int4": AbsmaxQuantized (4-bit, same blocksize),
        "fp4": Quantized4bit} of the same tensor `x`; `offset` drives panel (a) only."""
        a, b, c = self.axes
        parts = nf4_construction(offset)
        zmax = parts["z"].max()
        self.guides.set_segments([[(-2.6, p), (z, p), (z, 0)] for p, z in zip(parts["p"], parts["z"], strict=True)])
        self.points.set_offsets(np.column_stack([parts["z"], parts["p"]]))
        a.set_title(f"NF4 = normal quantiles / {zmax:.3f}\n(offset {offset:.4f})")
        nf4 = results["nf4"]
        n = x.numel()
        scale = nf4.block_absmax().repeat_interleave(nf4.blocksize)[:n]        # (n,)
        normalized = x.reshape(-1).float() / scale.clamp(min=1e-38)
        counts, edges = histogram(normalized, 101, -1.0, 1.0)
        self.hist.set_data(counts, edges)
        mids = codebooks.midpoints(codebooks.NF4).numpy()
        self.edges.set_segments([[(m, 0), (m, 1)] for m in mids])
        set_ylim_to(b, np.sort(counts)[-3], headroom=1.15)        # the +-1 ends hold 1 value a block
        b.set_title(f"blocks of {nf4.blocksize}, scaled to [-1, 1]\n(green: the 15 NF4 bin edges)")
        labels = []
        for name, res in results.items():
            levels, share = occupancy(res)
            self.shares[name] = (levels, share)
            self.lines[name].set_data(levels, 100 * share)
            labels.append(f"{name.upper()} {entropy_bits(share):.2f} bits")
            self.lines[name].set_label(labels[-1])
        top = max(100 * s.max() for _, s in self.shares.values())
        c.set_ylim(0, top * 1.35)
        c.legend(loc="upper left", frameon=False, ncols=2, fontsize=7.5)
        c.set_title("share of weights per level\n(entropy: 4 bits = all equal)")
        return self
