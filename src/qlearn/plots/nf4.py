"""NF4 bins: where the 16 values come from and why they fit normal-shaped weights.

`NF4View` draws (a) the standard normal CDF with the probabilities whose quantiles become the
16 NF4 values, (b) a tensor's block-normalized values (x / block absmax, in [-1, 1]) with the
NF4 bin edges, (c) the share of values that land on each level for NF4, uniform INT4 (absmax,
levels -7..7) and FP4. `qlearn.codeusage.occupancy` and `entropy_bits` give those numbers; the
entropy is at most log2 of the number of distinct levels: 4.0 bits for NF4's 16, log2 15 = 3.91 for
INT4's 15 levels and FP4's 15 distinct values (+0 and -0 are both codes). Even use is QLoRA's
motivation for NF4, not a proof of least error: SQNR and perplexity decide. The construction comes
from `qlearn.codebooks.nf4_construction`.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from .. import codebooks
from ..codeusage import entropy_bits, occupancy
from ..levels import to_unit_scale
from ._base import COLORS, LEGEND_ZORDER, new_figure, set_ylim_to, stairs_data, to_numpy

__all__ = ["NF4View"]


class NF4View:
    """Three panels: NF4 from the normal CDF, normalized block values with NF4 bins, and level
    occupancy for NF4 vs INT4 vs FP4. `shares` holds the last {name: (levels, share)}."""

    COMPARED = ("nf4", "int4", "fp4")   # registry formats (qlearn.formats) whose level usage panel (c) compares

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(3)
        a, b, c = self.axes
        zz = np.linspace(-2.6, 2.6, 200)
        a.plot(zz, to_numpy(codebooks.normal_cdf(torch.as_tensor(zz))), color="black", lw=1.2)
        self.guides = a.add_collection(LineCollection([], colors=COLORS["muted"], linewidths=0.6,
                                                      linestyles=":"))
        self.points = a.scatter([], [], s=14, color=COLORS["nf4"], zorder=3, label="quantile -> NF4 value")
        a.set_xlim(-2.6, 2.6)
        a.set_ylim(0, 1.02)
        a.set_xlabel("z (standard normal)")
        a.set_ylabel("P(Z <= z)")
        a.legend(loc="lower right", frameon=False).set_zorder(LEGEND_ZORDER)
        self.hist = b.stairs([0], np.linspace(-1, 1, 2), fill=True, color=COLORS["orig"], alpha=0.5)
        self.edges = b.add_collection(LineCollection(
            [], colors=COLORS["nf4"], linewidths=0.8,
            transform=blended_transform_factory(b.transData, b.transAxes)))
        b.set_xlim(-1.05, 1.05)
        b.set_xlabel("value / block absmax")
        b.set_ylabel("count")
        self.lines = {}
        for name in self.COMPARED:
            (self.lines[name],) = c.plot([], [], marker="o", ms=3.5, lw=1.2, color=COLORS[name])
        c.axhline(100 / 16, color="black", lw=0.8, ls="--", label="1/16")
        c.set_xlim(-1.08, 1.08)
        c.set_xlabel("level (scaled to [-1, 1])")
        c.set_ylabel("% of weights")
        self.shares: dict = {}

    def update(self, x: torch.Tensor, results: dict, offset: float = codebooks.NF4_OFFSET) -> NF4View:
        """results: {name: record} for the formats of `COMPARED` ("nf4": Quantized4bit, "int4": AbsmaxQuantized,
        "fp4": Quantized4bit, same blocksize) of the same tensor `x`; `offset` drives panel (a) only."""
        a, b, c = self.axes
        parts = codebooks.nf4_construction(offset)
        p, z = to_numpy(parts["p"]), to_numpy(parts["z"])                 # (15,) each
        zmax = z.max()
        self.guides.set_segments([[(-2.6, pi), (zi, pi), (zi, 0)] for pi, zi in zip(p, z, strict=True)])
        self.points.set_offsets(np.column_stack([z, p]))
        a.set_title(f"NF4 = normal quantiles / {zmax:.3f}\n(offset {offset:.4f})")
        nf4 = results["nf4"]
        counts, edges = stairs_data(to_unit_scale(x, nf4), 101, -1.0, 1.0)   # x / its block's absmax
        self.hist.set_data(counts, edges)
        mids = to_numpy(codebooks.midpoints(codebooks.NF4))
        self.edges.set_segments([[(m, 0), (m, 1)] for m in mids])
        set_ylim_to(b, np.sort(counts)[-3], headroom=1.15)        # the +-1 ends hold 1 value a block
        b.set_title(f"blocks of {nf4.blocksize}, scaled to [-1, 1]\n(green: the 15 NF4 bin edges)")
        labels = []
        for name, res in results.items():
            levels, share = (to_numpy(t) for t in occupancy(res))
            self.shares[name] = (levels, share)
            self.lines[name].set_data(levels, 100 * share)
            labels.append(f"{name.upper()} {entropy_bits(share):.2f} bits")
            self.lines[name].set_label(labels[-1])
        top = max(100 * s.max() for _, s in self.shares.values())
        c.set_ylim(0, top * 1.35)
        legend = c.get_legend()          # made again only when its labels change (a legend costs ~10 ms to lay out)
        if legend is None or [t.get_text() for t in legend.get_texts()][:len(labels)] != labels:
            c.legend(loc="upper left", frameon=False, ncols=2, fontsize=7.5).set_zorder(LEGEND_ZORDER)
        c.set_title("share of weights per level\n(entropy <= log2 of #levels)")
        return self
