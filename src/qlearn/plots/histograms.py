"""Weight histograms with a scheme's levels, and absmax vs zero-point on a skewed tensor.

`QuantHistogramView` draws (a) one group's values (the tensor, a row or a block) with that
group's quantization levels, (b) the whole tensor before and after quantize-dequantize, (c) the
error histogram. `ZeroPointView` compares absmax and zero-point: the levels each actually uses,
the rounding error per value, and SQNR against bits. Both build their artists once; `update`
swaps the data in place. What they draw is computed in the math layer: levels in `qlearn.levels`,
groups in `qlearn.granularity`, code usage in `qlearn.codeusage`, counts in `qlearn.distribution`,
errors in `qlearn.metrics`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from ..codeusage import code_counts
from ..distribution import sample, value_range
from ..granularity import group_values, n_groups
from ..levels import code_values, levels_of
from ..metrics import error_stats, errors
from ..quantize import Quantized4bit
from ._base import COLORS, LEGEND_ZORDER, new_figure, set_ylim_to, stairs_data, steady_limits, to_numpy

__all__ = ["QuantHistogramView", "ZeroPointView", "quantization_histograms"]

BINS = 80


def _group_name(result, g: int, count: int) -> str:
    if isinstance(result, Quantized4bit) or result.blocksize is not None:
        return f"block {g} of {count}"
    return "whole tensor" if result.axis is None else f"row {g} of {count}"


class QuantHistogramView:
    """Three panels for one quantization result: a group with its levels, the whole tensor before
    and after, and the error. Build once, then `update(x, result)` on every change.

    >>> import qlearn as ql
    >>> x = torch.randn(4096)
    >>> view = QuantHistogramView().update(x, ql.zeropoint_quantize(x, bits=3, blocksize=64))
    >>> len(view.levels.get_segments())
    8
    """

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(3)
        a, b, c = self.axes
        e = np.linspace(0, 1, 2)
        self.group_hist = a.stairs([0], e, fill=True, color=COLORS["orig"], alpha=0.55)
        self.levels = LineCollection([], colors=COLORS["level"], linewidths=0.9)
        a.add_collection(self.levels)
        self.orig_hist = b.stairs([0], e, fill=True, color=COLORS["orig"], alpha=0.4, label="original")
        self.deq_hist = b.stairs([0], e, color=COLORS["deq"], linewidth=1.2, label="dequantized")
        self.err_hist = c.stairs([0], e, fill=True, color=COLORS["err"], alpha=0.6)
        a.set_xlabel("weight value")
        a.set_ylabel("count")
        b.set_xlabel("weight value")
        c.set_xlabel("dequantized - original")
        b.legend(loc="upper right", frameon=False).set_zorder(LEGEND_ZORDER)
        self._x = self._whole = None                # the tensor, and (result, log) panels (b), (c) show

    def update(self, x: torch.Tensor, result, group: int = 0, log: bool = False,
               stats: dict | None = None, x_hat: torch.Tensor | None = None) -> QuantHistogramView:
        """Show `result` (a quantization of `x`); `group` picks the block/row for panel (a);
        `stats` (ql.error_stats) and `x_hat` (result.dequantize()) are computed when not given."""
        a, b, c = self.axes
        count = n_groups(result)
        group = min(max(int(group), 0), count - 1)
        if x is not self._x:                      # the tensor changed: new range, new histogram
            self._x, self._range, self._whole = x, value_range(x), None
            self._orig = stairs_data(x, BINS, *self._range)
        lo, hi = self._range
        x_hat = result.dequantize(torch.float32) if x_hat is None else x_hat
        group_levels = levels_of(result, group)                            # (levels,) float32
        levels = to_numpy(group_levels)
        vals = group_values(x, result, group)                              # (n,) float32: the group's values
        glo, ghi = value_range(vals, group_levels)
        counts, edges = stairs_data(vals, BINS if vals.numel() > 512 else 40, glo, ghi)
        self.group_hist.set_data(counts, edges)
        self.levels.set_segments([[(v, 0), (v, 1)] for v in levels])
        self.levels.set_transform(blended_transform_factory(a.transData, a.transAxes))
        a.set_xlim(*steady_limits(glo, ghi, margin=0.0))   # round limits: the next block often keeps the axis
        set_ylim_to(a, counts.max(), log)
        a.set_title(f"{_group_name(result, group, count)}: {vals.numel():,} values\n"
                    f"red: its {len(levels)} levels")
        if self._whole is not None and self._whole[0] is result and self._whole[1] == log:
            return self                          # the same result, another group: panels (b), (c) stand
        self._whole = (result, log)
        self.orig_hist.set_data(*self._orig)
        self.deq_hist.set_data(*stairs_data(x_hat, BINS, lo, hi))
        b.set_xlim(lo, hi)
        # dequantized values pile up on the levels: clip those spikes so the original stays readable
        set_ylim_to(b, self._orig[0].max() * (1.0 if log else 1.5), log)
        b.set_title(f"whole tensor, {x.numel():,} values\nbefore and after (spikes clipped)")
        stats = stats if stats is not None else error_stats(x, x_hat)
        m = max(stats["max_abs"], 1e-12) * 1.05                           # max |x_hat - x|
        ecounts, eedges = stairs_data(errors(x, x_hat), BINS, -m, m)
        self.err_hist.set_data(ecounts, eedges)
        c.set_xlim(*steady_limits(-m, m, margin=0.0))
        set_ylim_to(c, ecounts.max(), log)
        c.set_title(f"error of every value\nSQNR {stats['sqnr_db']:.1f} dB, max |error| {stats['max_abs']:.2g}")
        return self


def quantization_histograms(x: torch.Tensor, result, group: int = 0, log: bool = False) -> Figure:
    """One-shot figure of `QuantHistogramView` for `x` and its quantization `result`.

    >>> import qlearn as ql
    >>> x = torch.randn(1000)
    >>> quantization_histograms(x, ql.quantize_4bit(x, "nf4")).axes[0].get_title().splitlines()
    ['block 0 of 16: 64 values', 'red: its 16 levels']
    """
    return QuantHistogramView().update(x, result, group=group, log=log).fig


class ZeroPointView:
    """Absmax vs zero-point on one tensor: (a) histogram with the levels each scheme has, used
    ones in colour; (b) rounding error per value; (c) SQNR (dB) against bits 2..8.

    `used` holds the last counts: {"absmax": (used, total), "zeropoint": (used, total)}. Built for slider
    steps: limits are round (`steady_limits`), the level rugs are set from arrays, and what each result draws is
    kept for the results seen last.
    """

    N_POINTS = 2000

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(3)
        a, b, c = self.axes
        self.hist = a.stairs([0], np.linspace(0, 1, 2), fill=True, color=COLORS["muted"], alpha=0.5)
        self.rugs, self.points, self.curves = {}, {}, {}
        for name, band in (("absmax", (0.9, 0.99)), ("zeropoint", (0.79, 0.88))):
            rug = LineCollection([], linewidths=1.0,
                                 transform=blended_transform_factory(a.transData, a.transAxes))
            rug._band = band
            self.rugs[name] = a.add_collection(rug)
            self.points[name] = b.scatter([], [], s=3, color=COLORS[name], alpha=0.6, label=name)
            (self.curves[name],) = c.plot([], [], marker="o", color=COLORS[name], label=name)
        # from the axis up to the chosen bits' points only: a full-height line crossed the legend at 2-4 bits
        self.bits_line, = c.plot([4, 4], [0, 1], color=COLORS["muted"], linestyle="--", linewidth=1)
        a.set_xlabel("weight value")
        a.set_ylabel("count")
        b.set_xlabel("weight value")
        b.set_ylabel("dequantized - original")
        b.legend(loc="upper center", frameon=False, markerscale=4, ncols=2).set_zorder(LEGEND_ZORDER)
        c.set_xlabel("bits")
        c.set_ylabel("SQNR (dB)")
        c.set_xlim(1.7, 8.3)
        c.xaxis.set_major_locator(MaxNLocator(integer=True))
        c.legend(loc="upper left", frameon=False).set_zorder(LEGEND_ZORDER)
        self._x, self.used = None, {}
        self._memo: OrderedDict = OrderedDict()

    def update(self, x: torch.Tensor, results: dict, sqnr: dict, bits: int) -> ZeroPointView:
        """results: {"absmax": AbsmaxQuantized, "zeropoint": ZeroPointQuantized} at `bits`
        (per tensor); sqnr: {"absmax": [dB at bits 2..8], "zeropoint": [...]}."""
        a, b, c = self.axes
        if x is not self._x:
            self._x, (lo, hi) = x, value_range(x)
            self.hist.set_data(*stairs_data(x, BINS, lo, hi))
            self._pts = sample(x, self.N_POINTS)                               # (N_POINTS,) float32
        emax = 1e-12
        xlo, xhi = value_range(x)
        for name, res in results.items():
            levels, used, err = self._drawn(x, res)
            y0, y1 = self.rugs[name]._band
            self.rugs[name].set_segments(np.stack([np.column_stack([levels, np.full_like(levels, y)])
                                                   for y in (y0, y1)], axis=1))        # (levels, 2 ends, xy)
            self.rugs[name].set_color(np.where(used[:, None], to_rgba(COLORS[name]), to_rgba("#d0d0d0")))
            self.used[name] = (int(used.sum()), len(levels))
            xlo, xhi = min(xlo, float(levels[0])), max(xhi, float(levels[-1]))
            emax = max(emax, float(np.abs(err).max()))
            self.points[name].set_offsets(np.column_stack([to_numpy(self._pts), err]))
            self.curves[name].set_data(np.arange(2, 9), np.asarray(sqnr[name]))
        a.set_xlim(*steady_limits(xlo, xhi, margin=0.0))         # round limits: a shift step often keeps them
        set_ylim_to(a, self.hist.get_data().values.max() / 0.75)   # room for the level rugs on top
        # the titles sit a little higher than style_axes puts them: panel (a)'s is wider than its axes and would
        # otherwise touch the top tick label, which the fast renderer would then draw again with each new count
        a.set_title(f"levels used at {bits} bits (grey: unused)\n"
                    f"absmax {self.used['absmax'][0]}/{self.used['absmax'][1]} used, "
                    f"zero-point {self.used['zeropoint'][0]}/{self.used['zeropoint'][1]} used", y=1.03)
        b.set_xlim(*steady_limits(*value_range(self._pts), margin=0.0))
        # round limits (the next shift usually keeps them; a bit more halves the error, and the axis follows it),
        # room above for the legend
        b.set_ylim(*steady_limits(-emax * 1.1, emax * 1.6, margin=0.0, steps=4))
        b.set_title(f"rounding error per value\n({len(self._pts):,} of {x.numel():,} shown)", y=1.03)
        finite = [v for values in sqnr.values() for v in values if np.isfinite(v)]   # exact: inf dB
        bottom, top = steady_limits(min([0.0, *finite]), max([10.0, *finite]) * 1.1 + 1, margin=0.0, steps=4)
        c.set_ylim(bottom, top)
        at_bits = [v[bits - 2] for v in sqnr.values() if np.isfinite(v[bits - 2])]
        self.bits_line.set_data([bits, bits], [bottom, max(at_bits, default=top)])
        c.set_title("error against bits\n(dashed: the bits chosen)", y=1.03)   # the same at every step
        return self

    def _drawn(self, x: torch.Tensor, res) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What panels (a) and (b) draw of one result: its levels (sorted), whether each is used, and the error
        at the sampled positions. Kept for the last results seen (a slider moved back finds them)."""
        key = (id(x), id(res))
        if key not in self._memo:
            levels = to_numpy(code_values(res)).astype(np.float64)          # (2**bits or 2**bits - 1,)
            used = to_numpy(code_counts(res)) > 0                             # the same codes, in order
            err = to_numpy(sample(errors(x, res.dequantize(torch.float32)), self.N_POINTS))   # same positions
            self._memo[key] = (x, res, levels, used, err)      # (x and res held: their ids stay theirs)
            while len(self._memo) > 32:
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        return self._memo[key][2:]
