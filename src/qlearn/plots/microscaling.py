"""Pictures for lesson 14 (MX / NVFP4 / FP8 and rotations): one block of weights under four 4-bit
formats, each weight with the levels its block's scale allows; the error per weight. Everything drawn
is handed in (computed by qlearn.matched4bit); nothing here quantizes."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection

from ._base import COLORS, LEGEND_ZORDER, new_figure, steady_limits

__all__ = ["FORMAT_COLORS", "BlockGridView"]

FORMAT_COLORS = {"MXFP4": "#8172b3", "NVFP4": "#dd8452", "NF4": COLORS["nf4"], "int4": COLORS["int4"]}


class BlockGridView:
    """Two panels, built once and updated in place: (a) a window of weights (black dots), the value each
    format gives them (coloured marks, offset sideways) and, for one format, the levels every weight could
    take (grey ticks: where a block boundary changes the scale, the ticks change); (b) |error| per weight,
    one line per format.

    Built for slider steps: the level ticks are made from arrays in one go, the legend sits under the data (a
    still background for the fast renderer) and the title above it without touching it, and the limits are round
    (`steady_limits`), so a step usually redraws only the data and the title.

    >>> import numpy as np
    >>> v = BlockGridView(["MXFP4", "NF4"])
    >>> levels = np.tile(np.arange(3.0), (4, 1))          # 3 levels for each of 4 weights
    >>> v = v.update(np.zeros(4), {"MXFP4": np.ones(4), "NF4": np.ones(4)}, levels, "MXFP4", "t")
    >>> len(v.ticks.get_segments())
    12
    """

    def __init__(self, formats):
        self.formats = list(formats)
        self.fig, (a, b) = new_figure(2, figsize=(10.4, 3.9), width_ratios=(1.6, 1))
        self.fig.subplots_adjust(left=0.07, right=0.985, bottom=0.14, top=0.72, wspace=0.22)
        self.ticks = LineCollection(np.zeros((0, 2, 2)), colors=COLORS["muted"], linewidths=0.8, alpha=0.8)
        a.add_collection(self.ticks)
        (self.orig,) = a.plot([], [], "o", color="black", ms=3.5, label="weight", zorder=4)
        self.marks, self.errs = {}, {}
        for f in self.formats:
            (self.marks[f],) = a.plot([], [], "_", color=FORMAT_COLORS[f], ms=7, mew=2, label=f, zorder=3)
            (self.errs[f],) = b.plot([], [], "-o", color=FORMAT_COLORS[f], ms=2.5, lw=1, label=f)
        self.bounds = a.vlines([], 0, 1, colors=COLORS["muted"], linestyles=":", linewidth=0.8)
        a.set_xlabel("weight in the window (index)")
        a.set_ylabel("value")
        a.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(self.formats) + 1, frameon=False,
                 fontsize=7).set_zorder(LEGEND_ZORDER)
        b.set_xlabel("weight in the window (index)")
        b.set_ylabel("|dequantized - weight|")
        b.set_title("error per weight (colors as on the left)", fontsize=9)
        # the largest level of each format's blocks, one text per format in its colour at a fixed place: a slider
        # step changes some of them, and one seen before at its place is drawn from the text cache
        self.largest_label = a.text(0, 1.175, "", transform=a.transAxes, fontsize=8.5)
        self.largest, place = {}, 0.17
        for f in self.formats:
            self.largest[f] = a.text(place, 1.175, "", transform=a.transAxes, fontsize=8.5, color=FORMAT_COLORS[f])
            place += 0.31 if f == "NVFP4" else 0.19          # NVFP4 has two blocks in the window: two numbers
        self.axes = (a, b)

    def update(self, w, deq: dict, levels, grid_format: str, title: str, boundaries=(),
               largest: dict | None = None) -> BlockGridView:
        """w (n,) weights; deq {format: (n,) values}; levels (n, k): row i the values `grid_format` allows weight i
        (NaN: none; a weight with fewer levels pads its row); boundaries: window indices where `grid_format`'s
        block changes (dotted lines); largest {format: [the largest level of each of its blocks in the window]}."""
        a, b = self.axes
        n = len(w)
        x = np.arange(n)
        span = 0.28
        i, j = np.nonzero(~np.isnan(levels))   # one tick per (weight i, level j): (i - span, y) to (i + span, y)
        y = levels[i, j]
        self.ticks.set_segments(np.stack([np.column_stack([i - span, y]), np.column_stack([i + span, y])], axis=1))
        self.orig.set_data(x, w)
        offsets = np.linspace(-0.18, 0.18, len(self.formats))
        for off, f in zip(offsets, self.formats, strict=True):
            self.marks[f].set_data(x + off, deq[f])
            self.errs[f].set_data(x, np.abs(deq[f] - w))
        # limits symmetric about 0 (as every format's levels are) and round in coarse steps: the next window or
        # row often keeps them, and then the axis is not drawn again
        m = max(float(np.max(np.abs(w))), *(float(np.max(np.abs(d))) for d in deq.values())) or 1.0
        lo, hi = steady_limits(-m, m, steps=4)
        a.set_xlim(-0.7, n - 0.3)
        a.set_ylim(lo, hi)
        self.bounds.set_segments([[(t - 0.5, lo), (t - 0.5, hi)] for t in boundaries])
        top = max(float(np.max(np.abs(deq[f] - w))) for f in self.formats)
        b.set_xlim(-0.7, n - 0.3)
        b.set_ylim(0, steady_limits(0.0, top, steps=4)[1] if top > 0 else 1.0)
        a.set_title(title, loc="left", fontsize=8.5, y=1.23)   # above the largest levels and the legend
        self.largest_label.set_text("largest level:" if largest else "")
        for f, text in self.largest.items():
            values = (largest or {}).get(f)
            text.set_text(f"{f} {'/'.join(f'{s:.3g}' for s in values)}" if values else "")
        self.ticks.set_label(f"{grid_format} levels")
        return self
