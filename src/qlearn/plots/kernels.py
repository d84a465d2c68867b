"""Pictures of speed: where the time of a forward goes (stacked bars), the roofline (measured time per step
against the bandwidth and compute floors, per mode and batch size) and tokens/s against batch size.

These functions draw numbers handed to them (``qlearn.kernels.TimeSplit`` objects and plain dicts of
measurements); every number is measured in ``qlearn.kernels``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ._base import LEGEND_ZORDER, axes_or_new, new_figure

__all__ = ["PART_COLORS", "time_split_bars", "roofline", "crossover", "SpeedView"]

PART_COLORS = {("attention", "dequantize"): "#f2b48c", ("attention", "matmul"): "#dd8452",
               ("mlp", "dequantize"): "#9fb8dc", ("mlp", "matmul"): "#4c72b0",
               ("lm_head", "dequantize"): "#a6d4b1", ("lm_head", "matmul"): "#55a868",
               ("other", "other"): "#b0b0b0"}
_MARKERS = "osD^vP*X"


def time_split_bars(splits, ax: Axes | None = None, per_token: bool = True) -> list:
    """Horizontal stacked bars, one per split: each (layer type, part) in ms (per token if ``per_token``),
    hatched where the part is a dequantize; the unhooked forward marked by a black tick. Returns the
    artists: one bar per part drawn, then the tick, for each split.

    >>> from qlearn.kernels import TimeSplit
    >>> s = TimeSplit("bf16", 1, 1, 0.010, 0.011, {("mlp", "matmul"): 0.006, ("other", "other"): 0.005})
    >>> [type(a).__name__ for a in time_split_bars([s])]
    ['Rectangle', 'Rectangle', 'Line2D']
    """
    ax = axes_or_new(ax, figsize=(6.0, 3.0))
    artists = []
    ys = np.arange(len(splits))[::-1]
    seen = set()
    for y, split in zip(ys, splits, strict=True):
        scale = 1e3 / (split.tokens if per_token else 1)
        left = 0.0
        for key in PART_COLORS:
            width = split.parts.get(key, 0.0) * scale
            if width <= 0:
                continue
            label = None if key in seen else (key[0] if key[1] == "other" else f"{key[0]} {key[1]}")
            seen.add(key)
            artists += ax.barh(y, width, left=left, color=PART_COLORS[key], label=label, height=0.6,
                               hatch="//" if key[1] == "dequantize" else None, edgecolor="white", lw=0.5)
            left += width
        artists += ax.plot([split.forward_s * scale] * 2, [y - 0.38, y + 0.38], color="black", lw=1.6)
    ax.set_yticks(ys, [f"{s.label} b{s.batch}x{s.seq}" for s in splits])
    ax.set_xlabel("ms per token" if per_token else "ms per forward")
    ax.set_title("where the time goes (black tick: forward without clocks)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False, fontsize=7)
    return artists


def roofline(points: list[dict], ax: Axes | None = None, highlight: str | None = None) -> list:
    """Measured ms per forward step against batch size (log-log), one colour per mode, with that mode's
    floor (dashed: max of bandwidth floor and compute floor). Where a solid line sits on its dashed
    line the mode is memory- (flat part) or compute-bound (rising part); far above it, overhead.

    points: dicts with keys label, batch, measured_s, memory_s, compute_s.

    >>> pts = [dict(label="bf16", batch=b, measured_s=0.02 * b ** 0.5, memory_s=0.01, compute_s=0.001 * b)
    ...        for b in (1, 4, 16)]
    >>> len(roofline(pts))
    2
    """
    ax = axes_or_new(ax, figsize=(6.0, 3.6))
    artists = []
    for i, (label, pts) in enumerate(_by_mode(points)):
        b = np.array([p["batch"] for p in pts], dtype=float)
        measured = np.array([p["measured_s"] for p in pts]) * 1e3
        floor = np.maximum([p["memory_s"] for p in pts], [p["compute_s"] for p in pts]) * 1e3
        lw = 2.6 if label == highlight else 1.4
        (line,) = ax.plot(b, measured, marker=_MARKERS[i % len(_MARKERS)], lw=lw, label=label, color=f"C{i}")
        (dash,) = ax.plot(b, floor, ls="--", lw=1.0, color=f"C{i}", alpha=0.8)
        artists += [line, dash]
    _log_axes(ax)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * (hi / lo) ** 0.45)      # headroom: the legend (up to 4 rows) sits above every line
    ax.set_xlabel("batch size (sequences, one token each)")
    ax.set_ylabel("ms per forward step")
    ax.set_title("measured (solid) vs floor (dashed)")
    ax.legend(frameon=False, fontsize=7, ncols=2, loc="upper left")
    return artists


def _log_axes(ax: Axes) -> None:
    """Log-log axes labelled with plain numbers (1, 4, 16; 20, 50) instead of powers (2^2, 2x10^1)."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(plain)
    # minor ticks: label the 2s and 5s of each decade (20, 50, 200, ...) so a short range still has numbers
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _by_mode(points: list[dict]) -> list[tuple[str, list[dict]]]:
    """(label, that label's points by batch size) in first-seen label order: one line per mode."""
    labels = dict.fromkeys(p["label"] for p in points)
    return [(label, sorted((p for p in points if p["label"] == label), key=lambda p: p["batch"])) for label in labels]


def crossover(points: list[dict], ax: Axes | None = None) -> list:
    """Tokens per second against batch size, one line per mode (points: label, batch, measured_s).

    >>> len(crossover([dict(label="int4", batch=1, measured_s=0.1), dict(label="int4", batch=4, measured_s=0.2)]))
    1
    """
    ax = axes_or_new(ax, figsize=(6.0, 3.6))
    artists = []
    for i, (label, pts) in enumerate(_by_mode(points)):
        b = np.array([p["batch"] for p in pts], dtype=float)
        tps = b / np.array([p["measured_s"] for p in pts])
        artists += ax.plot(b, tps, marker=_MARKERS[i % len(_MARKERS)], label=label, color=f"C{i}")
    _log_axes(ax)
    ax.set_xlabel("batch size")
    ax.set_ylabel("tokens / s")
    ax.set_title("throughput against batch size")
    ax.legend(frameon=False, fontsize=7, ncols=2)
    return artists


class SpeedView:
    """Two panels for the speed explorer: (a) the time split of one mode at one batch size, beside the
    other modes at that batch; (b) the roofline with that mode drawn thick and the batch marked.
    Built once for the splits handed in; `update` moves bars and lines (one collection per part).

    >>> from qlearn.kernels import TimeSplit
    >>> s = TimeSplit("bf16", 1, 1, 0.01, 0.01, {("mlp", "matmul"): 0.01})
    >>> pt = dict(label="bf16", batch=1, measured_s=0.01, memory_s=0.005, compute_s=0.001)
    >>> SpeedView().update({("bf16", 1): s}, [pt], "bf16", 1).selected
    ('bf16', 1)
    """

    def __init__(self, fig: Figure | None = None):
        if fig is None:
            fig, _ = new_figure(2, figsize=(10.5, 4.4))
            fig.subplots_adjust(left=0.17, right=0.985, bottom=0.3, top=0.9, wspace=0.35)
        self.fig, self.axes = fig, np.array(fig.axes)
        self.selected = self._built = None

    def _build(self, splits: dict, points: list[dict]) -> None:
        a, b = self.axes
        rows = max(sum(1 for (_, bs) in splits if bs == batch) for _, batch in splits)
        parts = [k for k in PART_COLORS if any(s.parts.get(k, 0) > 0 for s in splits.values())]
        self.bars = {k: a.add_collection(PolyCollection(
            [], facecolors=PART_COLORS[k], edgecolors="white", linewidths=0.5,
            hatch="//" if k[1] == "dequantize" else None, label=k[0] if k[1] == "other" else f"{k[0]} {k[1]}"))
            for k in parts}
        (self.forward,) = a.plot([], [], color="black", lw=1.6)
        a.set_ylim(-0.6, rows - 0.4)
        a.set_xlabel("ms per token")
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False, fontsize=7)
        self.lines = dict(zip([label for label, _ in _by_mode(points)], roofline(points, ax=b)[::2], strict=True))
        b.get_legend().set_zorder(LEGEND_ZORDER)
        self.batch_line = b.axvline(1, color="black", lw=0.8, alpha=0.5)
        self._built = (id(splits), id(points))

    def update(self, splits: dict, points: list[dict], mode: str, batch: int) -> SpeedView:
        """splits: (mode, batch) -> TimeSplit; points: roofline dicts; draws ``mode`` at ``batch``."""
        a, _ = self.axes
        if self._built != (id(splits), id(points)):
            self._build(splits, points)
        chosen = splits[(mode, batch)]
        shown = [chosen] + [s for (m, bs), s in splits.items() if bs == batch and s is not chosen]
        ys = np.arange(len(shown))[::-1]                     # the chosen mode on top
        boxes = {k: [] for k in self.bars}
        ticks_x, ticks_y = [], []
        for y, split in zip(ys, shown, strict=True):
            scale, left = 1e3 / split.tokens, 0.0
            for key in self.bars:
                width = split.parts.get(key, 0.0) * scale
                if width > 0:
                    boxes[key].append([(left, y - 0.3), (left + width, y - 0.3), (left + width, y + 0.3),
                                       (left, y + 0.3)])
                    left += width
            ticks_x += [split.forward_s * scale] * 2 + [np.nan]
            ticks_y += [y - 0.38, y + 0.38, np.nan]
        for key, collection in self.bars.items():
            collection.set_verts(boxes[key])
        self.forward.set_data(ticks_x, ticks_y)
        a.set_yticks(ys, [f"{s.label} b{s.batch}x{s.seq}" for s in shown])
        a.set_xlim(0, 1.05 * max(max(s.hooked_s, s.forward_s) * 1e3 / s.tokens for s in shown))
        a.set_title(f"{mode}, batch {batch}: {1e3 * chosen.forward_s / chosen.tokens:.1f} ms/token "
                    f"(gap {100 * chosen.gap:.0f}%)")
        for label, line in self.lines.items():
            line.set_linewidth(2.6 if label == mode else 1.4)
        self.batch_line.set_xdata([batch, batch])
        self.selected = (mode, batch)
        return self
