"""Shared plotting helpers: figures from matplotlib's object API, PNG bytes, tensors as arrays.

Figures are `matplotlib.figure.Figure` objects with an Agg canvas, never pyplot's global registry,
so they work the same in Colab (ipywidgets 7.7, no ipympl), JupyterLab, VS Code, Voila and a
terminal. Histograms are counted by `qlearn.distribution.histogram` (torch.histc on the whole
tensor, fast at 1M values) and drawn as one `stairs` artist whose data can be swapped in place.

Rendering. `to_png(fig)` is matplotlib's own savefig. The faster redraws explorers use (a canvas that
replays each text's glyph draws from a cache, installed by `new_figure`, and a renderer that draws only
what moved, with the same pixels) live in `qlearn.plots._fastrender`, with their measurement. Axes are
styled so that their frame (ticks, grid, legends) is drawn under the data, which lets those redraws keep
it as a still background.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import ScaledTranslation

from ..distribution import histogram
from ._textcache import CachedTextCanvas

__all__ = ["new_figure", "to_png", "plain_agg", "to_numpy", "stairs_data", "steady_limits", "COLORS", "DPI",
           "LEGEND_ZORDER"]

DPI = 90          # 9.6 in wide -> 864 px: fits a notebook cell (JupyterLab, Colab) without scaling
COLORS = {"orig": "#4c72b0", "deq": "#dd8452", "err": "#55a868", "level": "#c44e52",
          "absmax": "#c44e52", "zeropoint": "#4c72b0", "nf4": "#55a868", "int4": "#c44e52",
          "fp4": "#8172b3", "muted": "#9a9a9a", "codes": "#4c72b0", "absmax_bytes": "#dd8452",
          "nested": "#55a868"}
# Legends sit under the data (ticks and grid at 0.5, data at 1 and above), as the ticks do, so a redraw that moves
# the data keeps them in its still background (qlearn.plots._fastrender); they go where the data leaves room.
LEGEND_ZORDER = 0.9
_RC = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 8,
       "xtick.labelsize": 8, "ytick.labelsize": 8}


def new_figure(ncols: int = 1, nrows: int = 1, figsize: tuple[float, float] = (9.6, 3.4),
               dpi: int = DPI, **subplots_kw) -> tuple[Figure, np.ndarray]:
    """A Figure with an Agg canvas and a grid of axes (always an array), styled for notebooks.

    Margins are fixed (no layout engine) so a redraw costs no layout pass.

    >>> fig, axes = new_figure(3); axes.shape
    (3,)
    """
    fig = Figure(figsize=figsize, dpi=dpi)
    CachedTextCanvas(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **subplots_kw).ravel())
    fig.subplots_adjust(left=0.075, right=0.985, bottom=0.16, top=0.82, wspace=0.32, hspace=0.6)
    for ax in axes:
        style_axes(ax)
    return fig, axes


def style_axes(ax: Axes) -> None:
    """Notebook-readable fonts, few ticks (each tick label costs render time), light spines,
    and fixed title / axis-label positions: matplotlib otherwise measures every tick label on each
    redraw to place them (a third of the time of redrawing an axes)."""
    for key, value in _RC.items():
        if key.startswith(("xtick", "ytick")):
            ax.tick_params(axis=key[0], labelsize=value)
    ax.title.set_fontsize(_RC["axes.titlesize"])
    ax.xaxis.label.set_fontsize(_RC["axes.labelsize"])
    ax.yaxis.label.set_fontsize(_RC["axes.labelsize"])
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_axisbelow(True)                    # ticks and grid under the data: the frame stays a still background
    ax.set_title("", y=1.0)                                   # y given: no automatic title placement
    to_points = ax.figure.dpi_scale_trans
    ax.xaxis.set_label_coords(0.5, 0, transform=ax.transAxes + ScaledTranslation(0, -20 / 72, to_points))
    ax.yaxis.set_label_coords(0, 0.5, transform=ax.transAxes + ScaledTranslation(-40 / 72, 0, to_points))
    ax.yaxis.set_major_formatter(FuncFormatter(_short))


def _short(value: float, _pos=None) -> str:
    """Tick labels that stay narrow: 240000 -> '240k', 1.5e6 -> '1.5M', 0.25 -> '0.25'."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:.4g}".replace("-", "\u2212")


def axes_or_new(ax: Axes | None, figsize=(5.0, 3.2)) -> Axes:
    """`ax` itself, or the single axes of a new figure."""
    return ax if ax is not None else new_figure(1, figsize=figsize)[1][0]


def plain_agg(fig: Figure) -> None:
    """Give `fig` matplotlib's plain FigureCanvasAgg, unless it has one (or an interactive Agg
    canvas such as ipympl's): no text cache, what `Explorer.renderer = "agg"` renders with."""
    if type(fig.canvas) is CachedTextCanvas or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)


def to_png(fig: Figure, compress_level: int = 1) -> bytes:
    """Render `fig` to PNG bytes (Agg). compress_level 1 encodes ~5x faster than the default 6
    for ~20% more bytes, which is what an interactive redraw wants.

    >>> to_png(new_figure()[0])[:4]
    b'\\x89PNG'
    """
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": compress_level})   # draws every artist
    return buf.getvalue()


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array to draw: detached, on the CPU, bfloat16 / float16 as float32.

    >>> to_numpy(torch.tensor([1.5], dtype=torch.bfloat16)).dtype
    dtype('float32')
    """
    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def stairs_data(x: torch.Tensor, bins: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """`qlearn.distribution.histogram` of `x` as numpy (counts, edges), ready for `Axes.stairs`.

    >>> stairs_data(torch.tensor([0., 0.5, 1.]), 2, 0., 1.)[0].tolist()
    [1.0, 2.0]
    """
    counts, edges = histogram(x, bins, lo, hi)
    return to_numpy(counts), to_numpy(edges)


def steady_limits(lo: float, hi: float, margin: float = 0.05, steps: int = 6) -> tuple[float, float]:
    """(lo, hi) widened by `margin` of the span, then out to multiples of a round step (1, 2 or 5 x 10^k,
    about span / `steps`): neighbouring data ranges (the next block, the next row) often get the same
    limits, so a slider step moves the data and leaves the axis (and its drawing) as it was.

    >>> steady_limits(0.013, 0.087)
    (0.0, 0.1)
    """
    span = (hi - lo) or abs(hi) or 1.0
    lo, hi = lo - margin * span, hi + margin * span
    raw = (hi - lo) / steps
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return round(math.floor(lo / step) * step, 12), round(math.ceil(hi / step) * step, 12)


def set_ylim_to(ax: Axes, top: float, log: bool = False, headroom: float = 1.3) -> None:
    """Y limits [0 (or 0.8 on a log axis), top * headroom] (room for a legend; linear: rounded up to a
    round number, `steady_limits`), set directly rather than autoscaled over every artist."""
    top = max(float(top), 1.0)
    if log:
        if ax.get_yscale() != "log":
            ax.set_yscale("log")
        ax.set_ylim(0.8, top * headroom ** 4)
    else:
        if ax.get_yscale() != "linear":
            ax.set_yscale("linear")
        ax.set_ylim(0, steady_limits(0.0, top * headroom, margin=0.0)[1])   # round: often the same next time
