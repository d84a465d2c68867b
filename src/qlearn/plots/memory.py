"""Double-quantization savings: what the absmax scales cost, and what quantizing them saves.

`DoubleQuantView` draws (a) the bytes of the quantization state (absmax, nested state) for
blocksizes 32..4096, with and without double quant, for one model size (the codes, always
4 bits a weight, are given in the title); (b) bits per parameter against blocksize; (c) the
saving in GB for model sizes up to 70B at the chosen blocksize.
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from ._base import COLORS, LEGEND_ZORDER, new_figure

__all__ = ["DoubleQuantView", "format_params"]


def format_params(n: float) -> str:
    """135e6 -> '135M', 7e9 -> '7B'.

    >>> format_params(7e9), format_params(135e6)
    ('7B', '135M')
    """
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def _boxes(x: np.ndarray, bottom: np.ndarray, height: np.ndarray, width: float = 0.38) -> list:
    """Bars centred on x, as the corners a PolyCollection takes (one collection redraws faster than a
    Rectangle a bar)."""
    return [[(xi - width / 2, b), (xi + width / 2, b), (xi + width / 2, b + h), (xi - width / 2, b + h)]
            for xi, b, h in zip(x, bottom, height, strict=True)]


def _short_int(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


class DoubleQuantView:
    """Three panels; `update(...)` swaps the data. `saving_bits` / `saving_gb` hold the numbers shown."""

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(3)
        a, b, c = self.axes
        a.set_xlabel("blocksize")
        a.set_ylabel("GB of scales")
        b.set_xlabel("blocksize")
        b.set_ylabel("bits per parameter")
        b.set_xscale("log", base=2)
        c.set_ylabel("GB saved by double quant")
        self._built = None
        self.saving_bits = self.saving_gb = 0.0

    def _build(self, blocksizes, split, bpp, sizes):
        a, b, c = self.axes
        x = np.arange(len(blocksizes))
        self.bars = {}                  # (double quant, part) -> one collection of bars, one per blocksize
        for dq, shift, hatch in ((False, -0.2, None), (True, 0.2, "//")):
            bottom = np.zeros(len(blocksizes))
            for part in ("absmax", "nested"):
                per_param = np.array([split[(bs, dq)][part] for bs in blocksizes])
                label = f"{part} ({'double quant' if dq else 'float32'})" if part == "absmax" or dq else None
                color = COLORS["absmax_bytes" if part == "absmax" else "nested"]
                self.bars[(dq, part)] = a.add_collection(PolyCollection(
                    _boxes(x + shift, bottom, per_param), facecolors=color, alpha=0.55 if dq else 0.9, hatch=hatch,
                    edgecolors="white", label=label))
                bottom = bottom + per_param
            self._x = x
            self._per_param_state = getattr(self, "_per_param_state", {})
            self._per_param_state[dq] = bottom
        a.set_xticks(x, [_short_int(bs) for bs in blocksizes])
        self.span = a.axvspan(-0.5, 0.5, color="#f0e68c", alpha=0.35, zorder=0.95)   # over ticks and legend, under bars
        a.legend(loc="upper right", frameon=False, fontsize=7).set_zorder(LEGEND_ZORDER)
        for dq, style in ((False, "-"), (True, "--")):
            b.plot(blocksizes, bpp[dq], style, marker="o", ms=3, color=COLORS["orig"] if not dq else COLORS["nf4"],
                   label="double quant" if dq else "float32 absmax")
        (self.marker,) = b.plot([], [], "o", ms=8, mfc="none", mec=COLORS["level"], mew=1.5)
        b.set_xticks(blocksizes[::2], [_short_int(bs) for bs in blocksizes[::2]])
        b.legend(loc="upper right", frameon=False).set_zorder(LEGEND_ZORDER)
        b.set_ylim(3.9, max(bpp[False]) + 0.15)
        self.size_bars = c.add_collection(PolyCollection(_boxes(np.arange(len(sizes)), np.zeros(len(sizes)),
                                                                np.zeros(len(sizes)), 0.8), facecolors=COLORS["muted"]))
        c.set_xticks(range(len(sizes)), [format_params(n) for n in sizes])
        c.set_xlabel("model size (parameters)")
        self._built = (tuple(blocksizes), tuple(sizes))

    def update(self, blocksizes, split: dict, bpp: dict, blocksize: int, n_params: float,
               sizes) -> DoubleQuantView:
        """split: {(blocksize, double_quant): {"codes", "absmax", "nested"} bytes per parameter};
        bpp: {False: [bits per param per blocksize], True: [...]} (from ql.memory.bits_per_param)."""
        a, b, c = self.axes
        if self._built != (tuple(blocksizes), tuple(sizes)):
            self._build(blocksizes, split, bpp, sizes)
        gb = n_params / 1e9
        for (dq, part), bars in self.bars.items():
            bottom = np.zeros(len(blocksizes)) if part == "absmax" else np.array(
                [split[(bs, dq)]["absmax"] for bs in blocksizes]) * gb
            heights = np.array([split[(bs, dq)][part] for bs in blocksizes]) * gb
            bars.set_verts(_boxes(self._x + (0.2 if dq else -0.2), bottom, heights))
        a.set_ylim(0, self._per_param_state[False].max() * gb * 1.35)
        i = list(blocksizes).index(blocksize)
        self.saving_bits = bpp[False][i] - bpp[True][i]
        self.saving_gb = self.saving_bits * n_params / 8 / 1e9
        codes_gb = split[(blocksize, False)]["codes"] * gb
        a.set_title(f"{format_params(n_params)}: codes {codes_gb:.2f} GB, plus scales\n"
                    "(left float32, right double quant)")
        self.span.set_x(i - 0.5)
        self.marker.set_data([blocksize, blocksize], [bpp[False][i], bpp[True][i]])
        b.set_title(f"blocksize {blocksize}: {bpp[False][i]:.4g} -> {bpp[True][i]:.4g} bits\n"
                    f"saves {self.saving_bits:.3f} bit/param")
        savings = [self.saving_bits * n / 8 / 1e9 for n in sizes]
        self.size_bars.set_verts(_boxes(np.arange(len(sizes)), np.zeros(len(sizes)), np.array(savings), 0.8))
        self.size_bars.set_facecolor([COLORS["level"] if n == n_params else COLORS["muted"] for n in sizes])
        c.set_ylim(0, max(savings) * 1.25)
        c.set_title(f"saving at blocksize {blocksize}\n{format_params(n_params)}: {self.saving_gb:.2f} GB")
        return self
