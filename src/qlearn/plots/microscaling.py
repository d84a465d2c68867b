"""Pictures for lesson 14 (MX / NVFP4 / FP8 and rotations): one block of weights under four 4-bit
formats, each weight with the levels its block's scale allows; the error per weight. Everything drawn
is handed in (computed by qlearn.matched4bit); nothing here quantizes."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection

from ._base import COLORS, new_figure, steady_limits

__all__ = ["FORMAT_COLORS", "BlockGridView"]

FORMAT_COLORS = {"MXFP4": "#8172b3", "NVFP4": "#dd8452", "NF4": COLORS["nf4"], "int4": COLORS["int4"]}


class BlockGridView:
    """Two panels, built once and updated in place: (a) a window of weights (black dots), the value each
    format gives them (coloured marks, offset sideways) and, for one format, the levels every weight could
    take (grey ticks: where a block boundary changes the scale, the ticks change); (b) |error| per weight,
    one line per format.

    >>> import numpy as np
    >>> v = BlockGridView(["MXFP4", "NF4"])
    >>> v = v.update(np.zeros(4), {"MXFP4": np.ones(4), "NF4": np.ones(4)}, [np.arange(3.0)] * 4, "MXFP4", "t")
    >>> len(v.ticks.get_segments())
    12
    """

    def __init__(self, formats):
        self.formats = list(formats)
        self.fig, (a, b) = new_figure(2, figsize=(10.4, 3.9), width_ratios=(1.6, 1))
        self.fig.subplots_adjust(left=0.07, right=0.985, bottom=0.14, top=0.72, wspace=0.22)
        self.ticks = LineCollection([], colors=COLORS["muted"], linewidths=0.8, alpha=0.8)
        a.add_collection(self.ticks)
        (self.orig,) = a.plot([], [], "o", color="black", ms=3.5, label="weight", zorder=4)
        self.marks, self.errs = {}, {}
        for f in self.formats:
            (self.marks[f],) = a.plot([], [], "_", color=FORMAT_COLORS[f], ms=7, mew=2, label=f, zorder=3)
            (self.errs[f],) = b.plot([], [], "-o", color=FORMAT_COLORS[f], ms=2.5, lw=1, label=f)
        self.bounds = a.vlines([], 0, 1, colors=COLORS["muted"], linestyles=":", linewidth=0.8)
        a.set_xlabel("weight in the window (index)")
        a.set_ylabel("value")
        a.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(self.formats) + 1, frameon=False, fontsize=7)
        b.set_xlabel("weight in the window (index)")
        b.set_ylabel("|dequantized - weight|")
        b.set_title("error per weight (colors as on the left)", fontsize=9)
        self.axes = (a, b)

    def update(self, w, deq: dict, levels: list, grid_format: str, title: str, boundaries=()) -> BlockGridView:
        """w (n,) weights; deq {format: (n,) values}; levels: per weight, the (k,) values `grid_format` allows
        it; boundaries: window indices where `grid_format`'s block changes (dotted lines)."""
        a, b = self.axes
        n = len(w)
        x = np.arange(n)
        span = 0.28
        self.ticks.set_segments([[(i - span, y), (i + span, y)] for i in range(n) for y in levels[i]])
        self.orig.set_data(x, w)
        offsets = np.linspace(-0.18, 0.18, len(self.formats))
        for off, f in zip(offsets, self.formats, strict=True):
            self.marks[f].set_data(x + off, deq[f])
            self.errs[f].set_data(x, np.abs(deq[f] - w))
        lo = min(float(np.min(w)), *(float(np.min(d)) for d in deq.values()))
        hi = max(float(np.max(w)), *(float(np.max(d)) for d in deq.values()))
        lo, hi = steady_limits(lo, hi)           # round limits: the next window often keeps them (and the axis)
        a.set_xlim(-0.7, n - 0.3)
        a.set_ylim(lo, hi)
        self.bounds.set_segments([[(t - 0.5, lo), (t - 0.5, hi)] for t in boundaries])
        top = max(float(np.max(np.abs(deq[f] - w))) for f in self.formats)
        b.set_xlim(-0.7, n - 0.3)
        b.set_ylim(0, steady_limits(0.0, top)[1] if top > 0 else 1.0)
        a.set_title(title, loc="left", fontsize=8.5, y=1.1)
        self.ticks.set_label(f"{grid_format} levels")
        return self
