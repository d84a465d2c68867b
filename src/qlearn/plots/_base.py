"""Shared plotting helpers: figures from matplotlib's object API, PNG bytes, tensors as arrays.

Figures are `matplotlib.figure.Figure` objects with an Agg canvas, never pyplot's global registry,
so they work the same in Colab (ipywidgets 7.7, no ipympl), JupyterLab, VS Code, Voila and a
terminal. Histograms are counted by `qlearn.distribution.histogram` (torch.histc on the whole
tensor, fast at 1M values) and drawn as one `stairs` artist whose data can be swapped in place.

Rendering. `to_png(fig)` is matplotlib's own savefig. Explorers redraw after every control move,
and a plain Agg render of a three-panel figure costs ~170-230 ms of CPU (matplotlib 3.11 lays out
and rasterizes each glyph of each tick label and title in Python: over half of that time), above
the 100 ms an explorer aims for (benchmarks/bench_widgets.py measures both). Two helpers below,
public matplotlib API only, bring it to ~60-90 ms: `CachedTextCanvas` (each text rasterized once,
then stamped as an image; new_figure installs it) and `FastRenderer` (re-renders only the axes
whose frame changed). `qlearn.widgets.Explorer.renderer` switches between "fast" and "agg".
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import Bbox, IdentityTransform, ScaledTranslation

from ..distribution import histogram

__all__ = ["new_figure", "to_png", "plain_agg", "to_numpy", "stairs_data", "COLORS", "DPI", "FastRenderer",
           "CachedTextCanvas"]

DPI = 90          # 9.6 in wide -> 864 px: fits a notebook cell (JupyterLab, Colab) without scaling
COLORS = {"orig": "#4c72b0", "deq": "#dd8452", "err": "#55a868", "level": "#c44e52",
          "absmax": "#c44e52", "zeropoint": "#4c72b0", "nf4": "#55a868", "int4": "#c44e52",
          "fp4": "#8172b3", "muted": "#9a9a9a", "codes": "#4c72b0", "absmax_bytes": "#dd8452",
          "nested": "#55a868"}
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


def set_ylim_to(ax: Axes, top: float, log: bool = False, headroom: float = 1.3) -> None:
    """Y limits [0 (or 0.8 on a log axis), top * headroom] (room for a legend), set directly
    rather than autoscaled over every artist."""
    top = max(float(top), 1.0)
    if log:
        if ax.get_yscale() != "log":
            ax.set_yscale("log")
        ax.set_ylim(0.8, top * headroom ** 4)
    else:
        if ax.get_yscale() != "linear":
            ax.set_yscale("linear")
        ax.set_ylim(0, top * headroom)


class FastRenderer:
    """PNG bytes of a figure that is redrawn often, re-rendering only what changed.

    Each axes' frame (spines, ticks, tick labels, axis labels, legend) is cached as pixels and
    drawn again only when its limits, scales, labels, ticks or legend texts change; titles and data
    artists are drawn on top every time. That turns a ~120 ms full render of three panels into
    ~20-40 ms when the axes stay put. `png()` equals `to_png(fig)` up to anti-aliasing.
    During a render the data artists are flagged animated (so that `canvas.draw()` leaves them
    out of the cached frame) and given back their own flag afterwards.

    >>> fig, axes = new_figure(2); r = FastRenderer(fig)
    >>> r.png()[:4] == to_png(fig)[:4]
    True
    """

    def __init__(self, fig: Figure):
        self.fig = fig
        self.canvas = fig.canvas if isinstance(fig.canvas, CachedTextCanvas) else CachedTextCanvas(fig)
        self._keys: dict = {}
        self._background = None
        self._size = None
        self._titles: dict = {}
        self._extents: dict = {}   # axes -> its tight bbox (labels included) when last drawn
        self.full_draws = self.axes_draws = 0   # counters, for tests and benchmarks

    def png(self, compress_level: int = 1) -> bytes:
        from PIL import Image

        self._render()
        w, h = self.canvas.get_width_height()
        image = Image.frombuffer("RGBA", (w, h), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        image.save(buf, format="png", compress_level=compress_level)
        return buf.getvalue()

    def invalidate(self) -> None:
        """Force a full render next time (e.g. after adding or removing axes)."""
        self._background = None

    def _render(self) -> None:
        flipped: list = []          # (artist, its own animated flag), given back after the render
        try:
            self._render_flagged(flipped)
        finally:
            for artist, animated in flipped:
                artist.set_animated(animated)

    def _render_flagged(self, flipped: list) -> None:
        fig, canvas = self.fig, self.canvas
        axes = list(fig.axes)
        dynamic = {ax: _mark_dynamic(ax, flipped) for ax in axes}
        keys = {ax: _frame_key(ax) for ax in axes}
        size = (canvas.get_width_height(), fig.dpi, len(axes))
        redrawn = set(axes)
        if self._background is None or size != self._size or set(keys) != set(self._keys):
            canvas.draw()                       # everything except the dynamic artists
            self.full_draws += 1
            self._titles = {}
            self._extents = {ax: ax.get_tightbbox(canvas.get_renderer()) for ax in axes}
        else:
            canvas.restore_region(self._background)
            renderer = canvas.get_renderer()
            redrawn = self._affected({ax for ax in axes if keys[ax] != self._keys[ax]}, axes)
            for ax in redrawn:
                self._blank(ax, axes).draw(renderer)
            for ax in redrawn:
                ax.draw(renderer)
                self._extents[ax] = ax.get_tightbbox(renderer)
                self.axes_draws += 1
        self._background = canvas.copy_from_bbox(fig.bbox)
        self._keys, self._size = keys, size
        for ax in axes:
            for artist in sorted(dynamic[ax], key=lambda a: a.get_zorder()):
                if artist is ax.title:
                    self._draw_title(ax, ax in redrawn)
                else:
                    fig.draw_artist(artist)

    def _draw_title(self, ax: Axes, redrawn: bool) -> None:
        """Titles sit outside the axes, where nothing else is drawn: an unchanged title is put back
        from its cached pixels instead of being laid out and rendered again."""
        title = ax.title
        key = (title.get_text(), title.get_position(), title.get_color(), title.get_fontsize())
        cached = self._titles.get(ax)
        if cached is not None and cached[0] == key and not redrawn:
            self.canvas.restore_region(cached[1])
            return
        self.fig.draw_artist(title)
        if title.get_text():
            box = title.get_window_extent(self.canvas.get_renderer()).padded(2)
            self._titles[ax] = (key, self.canvas.copy_from_bbox(Bbox.intersection(box, self.fig.bbox) or box))

    def _affected(self, changed: set, axes: list) -> set:
        """The changed axes plus every axes whose labels reach into a cell that will be blanked
        (e.g. a y label that sits left of halfway to its neighbour), until nothing more is added."""
        affected = set(changed)
        while True:
            cells = [self._blank(ax, axes).get_bbox().transformed(IdentityTransform()) for ax in affected]
            more = {ax for ax in axes if ax not in affected and self._extents.get(ax) is not None
                    and any(self._extents[ax].overlaps(cell) for cell in cells)}
            if not more:
                return affected
            affected |= more

    def _blank(self, ax: Axes, axes: list) -> Rectangle:
        """A figure-coloured rectangle over `ax`'s cell: up to halfway to its neighbours."""
        b, W, H = ax.bbox, self.fig.bbox.width, self.fig.bbox.height
        x0, x1, y0, y1 = 0.0, W, 0.0, H
        for other in axes:
            o = other.bbox
            if other is ax:
                continue
            if o.y1 > b.y0 and o.y0 < b.y1:          # side by side
                if o.x1 <= b.x0:
                    x0 = max(x0, (o.x1 + b.x0) / 2)
                elif o.x0 >= b.x1:
                    x1 = min(x1, (b.x1 + o.x0) / 2)
            elif o.x1 > b.x0 and o.x0 < b.x1:        # stacked
                if o.y1 <= b.y0:
                    y0 = max(y0, (o.y1 + b.y0) / 2)
                elif o.y0 >= b.y1:
                    y1 = min(y1, (b.y1 + o.y0) / 2)
        return Rectangle((x0, y0), x1 - x0, y1 - y0, transform=IdentityTransform(),
                         facecolor=self.fig.get_facecolor(), edgecolor="none", figure=self.fig)


def _mark_dynamic(ax: Axes, flipped: list) -> list:
    """Flag every child of `ax` except its frame and legend as animated (recording each flag
    changed in `flipped`); return them. A legend is cached with the frame (keyed by its texts):
    laying one out costs ~15 ms."""
    frame = {ax.patch, ax.xaxis, ax.yaxis, *ax.spines.values()}
    legend = ax.get_legend()
    if legend is not None:
        frame.add(legend)
        if legend.get_animated():
            flipped.append((legend, True))
            legend.set_animated(False)
    dynamic = [a for a in ax.get_children() if a not in frame and a.get_visible()]
    for artist in dynamic:
        if not artist.get_animated():
            flipped.append((artist, False))
            artist.set_animated(True)
    return dynamic


def _ticks(axis) -> tuple:
    loc, fmt = axis.get_major_locator(), axis.get_major_formatter()
    return (type(loc).__name__, tuple(np.atleast_1d(getattr(loc, "locs", ()))),
            tuple(getattr(fmt, "seq", ()) or ()), axis.get_label_text())


def _frame_key(ax: Axes) -> tuple:
    """What the cached frame of `ax` depends on."""
    legend = ax.get_legend()
    legend_key = None if legend is None else (id(legend), tuple(t.get_text() for t in legend.get_texts()))
    return (tuple(ax.get_xlim()), tuple(ax.get_ylim()), ax.get_xscale(), ax.get_yscale(),
            tuple(ax.bbox.bounds), _ticks(ax.xaxis), _ticks(ax.yaxis), ax.get_visible(), legend_key)


# -- text cache -------------------------------------------------------------------------------------
_TEXTS: OrderedDict = OrderedDict()   # key -> (RGBA image or None, dx, dy) of a rendered text
_TEXTS_SIZE = 4096


class _CachedTextRenderer(RendererAgg):
    """RendererAgg whose `draw_text` renders a plain text once into a small RGBA image (a scratch
    RendererAgg) and stamps that image with `draw_image` every later time. Public API only."""

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        # font features and language exist from matplotlib 3.11 on (Colab has 3.10): absent means plain text
        special = mtext is not None and any(getattr(mtext, f"get_{attr}", lambda: None)()
                                            for attr in ("fontfeatures", "language"))
        if ismath or special or gc.get_forced_alpha():      # (draw_image would apply that alpha twice)
            return super().draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
        key = (s, hash(prop), prop.get_size_in_points(), angle, self.dpi, get_hinting_flag(),
               gc.get_antialiased(), tuple(gc.get_rgb()))
        stamp = _TEXTS.get(key)
        if stamp is None:
            stamp = _TEXTS[key] = self._rasterize(gc, s, prop, angle, mtext)
            while len(_TEXTS) > _TEXTS_SIZE:
                _TEXTS.popitem(last=False)
        else:
            _TEXTS.move_to_end(key)
        image, dx, dy = stamp   # draw_image: y up from the bottom, the image's first row at the bottom
        if image is not None:
            self.draw_image(gc, round(x) + dx, self.height - (round(y) + dy + image.shape[0]), image)
        return None

    def _rasterize(self, gc, s, prop, angle, mtext) -> tuple:
        """`s` drawn at a whole-pixel anchor on a transparent scratch renderer: (RGBA image cropped
        to its ink, bottom row first as draw_image wants it, or None; column and row of its top
        left corner relative to the anchor, rows counted downwards as draw_text's y)."""
        w, h, d = self.get_text_width_height_descent(s, prop, ismath=False)
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        corners = [(px, py) for px in (0, w) for py in (-d, h - d)]        # the text's box, unrotated
        xs = [px * cos - py * sin for px, py in corners]
        ys = [px * sin + py * cos for px, py in corners]
        pad = 4 + math.ceil(h / 2)                                          # room for overhanging glyphs
        left, right = math.floor(min(xs)) - pad, math.ceil(max(xs)) + pad
        bottom, top = math.floor(min(ys)) - pad, math.ceil(max(ys)) + pad   # upwards from the anchor
        scratch = RendererAgg(right - left, top - bottom, self.dpi)
        sgc = scratch.new_gc()
        sgc.set_foreground(gc.get_rgb(), isRGBA=True)
        sgc.set_antialiased(gc.get_antialiased())
        scratch.draw_text(sgc, -left, top, s, prop, angle, mtext=mtext)
        sgc.restore()
        rgba = np.asarray(scratch.buffer_rgba())
        rows, cols = np.flatnonzero(rgba[..., 3].any(axis=1)), np.flatnonzero(rgba[..., 3].any(axis=0))
        if rows.size == 0:
            return None, 0, 0
        image = np.ascontiguousarray(rgba[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1][::-1])
        return image, int(cols[0]) + left, int(rows[0]) - top


class CachedTextCanvas(FigureCanvasAgg):
    """FigureCanvasAgg whose renderer caches rendered texts as images.

    Matplotlib (3.11) lays out and rasterizes every glyph of every text on every draw, which is
    most of the time of redrawing a small figure (a tick label ~1.5 ms, a two-line title ~8 ms on a
    2-core machine). Here each plain text is rendered once per (string, font, angle, dpi, hinting,
    colour) at a whole-pixel position and stamped again at any whole-pixel position (text may move
    by up to half a pixel, which the eye does not see). Mathtext, text with font features and
    text with an explicit alpha take matplotlib's own path.
    """

    def get_renderer(self):
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if getattr(self, "_text_renderer_key", None) != key:
            self.renderer = _CachedTextRenderer(w, h, self.figure.dpi)
            self._text_renderer_key = key
        return self.renderer
