"""Exact fast redraws of a matplotlib figure: a text cache that replays matplotlib's own glyph draws,
and a renderer that keeps the figure's static part as pixels and draws only what can move.

Why: an explorer redraws on every step of a dragged slider, and a plain Agg render of a three-panel figure
costs 80-120 ms of CPU on a 2-core machine (matplotlib 3.11 lays out and rasterizes every glyph of every tick
label and title in Python: ~60% of that), while a frame at 30 per second leaves 33 ms for the math, the
render and the PNG together (benchmarks/bench_widgets.py measures it).

Exact, not approximate: every frame equals a full `savefig` render of the figure pixel for pixel
(tests/test_frames.py compares each explorer's frames with fresh full renders):

- `CachedTextCanvas` draws each text once through matplotlib's own path while recording the glyph images
  it blends (`draw_text_image` calls) and later replays exactly those calls for the same string, font and
  position: identical pixels, without the layout and the FreeType rendering.
- `FastRenderer` sorts the artists into matplotlib's draw order. "Static" ones (an axes' patch, its axes
  with ticks and labels, a legend) stay in a background image when nothing drawn before them overlaps them,
  so drawing the other, "dynamic" artists over that background composes the same pixels in the same order.
  When a static artist changes (new limits, ticks, labels), the area it covered and covers now is rendered
  again from scratch: the figure's face, then every static artist reaching into that area, in order.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.spines import Spine
from matplotlib.text import Text
from matplotlib.transforms import Bbox

__all__ = ["FastRenderer", "CachedTextCanvas", "encode_png"]


class FastRenderer:
    """PNG bytes of a figure that is redrawn often, equal pixel for pixel to a full render.

    `render()` leaves the frame in the canvas buffer; `png()` encodes it. Counters for tests and
    benchmarks: `full_draws` (backgrounds rendered whole), `axes_draws` (static artists rendered again
    in part of the background), `frames`.

    >>> from qlearn.plots._base import new_figure
    >>> fig, axes = new_figure(2); r = FastRenderer(fig)
    >>> r.png()[:4], r.full_draws
    (b'\\x89PNG', 1)
    """

    def __init__(self, fig: Figure):
        self.fig = fig
        self.canvas = fig.canvas if isinstance(fig.canvas, CachedTextCanvas) else CachedTextCanvas(fig)
        self._background: np.ndarray | None = None   # (rows, cols, 4) uint8: the static artists alone
        self._units: dict = {}                        # static artist -> (key, extent) in the background
        self._size = None
        self.full_draws = self.axes_draws = self.frames = 0

    def png(self, compress_level: int = 1) -> bytes:
        self.render()
        rgba = np.asarray(self.canvas.buffer_rgba())
        return encode_png(rgba, compress_level, opaque=_opaque(self.fig))

    def invalidate(self) -> None:
        """Render the background whole next time."""
        self._background = None

    def render(self) -> None:
        fig, canvas = self.fig, self.canvas
        renderer = canvas.get_renderer()
        if fig.get_layout_engine() is not None or any(ax.get_rasterization_zorder() is not None
                                                      for ax in fig.axes):
            canvas.draw()                # a layout engine moves axes at draw time: render it all
            self.full_draws += 1
            return
        order = _draw_order(fig, renderer)
        units, dynamic = self._split(order, renderer)
        size = (canvas.get_width_height(physical=True), fig.dpi, _patch_key(fig.patch))
        if self._background is None or size != self._size:
            self._static_pass(renderer, order, units, None)
        else:
            rects = [box for a, (key, ext) in units.items() if self._units.get(a, (None,))[0] != key
                     for box in ext + self._units.get(a, (None, ()))[1]]      # where it is now and was before
            rects += [box for a, (_, ext) in self._units.items() if a not in units for box in ext]
            if rects:
                self._static_pass(renderer, order, units, rects)
        self._units, self._size = units, size
        np.asarray(canvas.buffer_rgba())[...] = self._background
        for artist in dynamic:
            artist.draw(renderer)
        self.frames += 1

    def _split(self, order: list, renderer) -> tuple[dict, list]:
        """({static artist: (key, extent)} kept in the background, [dynamic artists in draw order]).

        A static candidate goes to the background unless an artist drawn before it in the full
        render (a dynamic one) may overlap it: drawing it under that artist would change the pixels."""
        units, dynamic, footprints, pending, clips = {}, [], [], [], set()
        for artist, ax in order:
            key = _static_key(artist, ax)
            if key is not None:
                prev = self._units.get(artist)
                extent = prev[1] if prev is not None and prev[0] == key else _extent(artist, ax, renderer)
                footprints += [_footprint(a, renderer) for a in pending]   # computed only when a check needs them
                pending = []
                if not _overlaps(extent, footprints):
                    units[artist] = (key, extent)
                    continue
                footprints += extent
            elif not artist.get_visible():
                continue                        # draws nothing
            elif artist.get_clip_on() and artist.get_clip_box() is not None:
                clip = artist.get_clip_box()     # Agg touches no pixel outside a clip box
                if id(clip) not in clips:
                    clips.add(id(clip))
                    footprints.append(clip.padded(1))
            else:
                pending.append(artist)
            dynamic.append(artist)
        return units, dynamic

    def _static_pass(self, renderer, order: list, units: dict, rects: list | None) -> None:
        """Render the figure's face and the static artists (those reaching into `rects`; all when
        None) and copy the result into the background (within `rects`)."""
        buffer = np.asarray(self.canvas.buffer_rgba())
        renderer.clear()
        self.fig.patch.draw(renderer)
        for artist, _ in order:
            unit = units.get(artist)
            if unit is not None and (rects is None or _overlaps(unit[1], rects)):
                artist.draw(renderer)
                self.axes_draws += rects is not None
        if rects is None:
            self._background = buffer.copy()
            self.full_draws += 1
            return
        height, width = buffer.shape[:2]
        for r in rects:
            rows = slice(max(0, int(np.floor(height - r.y1))), min(height, int(np.ceil(height - r.y0))))
            cols = slice(max(0, int(np.floor(r.x0))), min(width, int(np.ceil(r.x1))))
            self._background[rows, cols] = buffer[rows, cols]


def _draw_order(fig: Figure, renderer) -> list:
    """[(artist, its axes or None)] in the order `Figure.draw` and `Axes.draw` draw them (matplotlib
    3.10 / 3.11), after the steps they take first (limits brought up to date, aspect, title position)."""
    for ax in fig.axes:
        locator = ax.get_axes_locator()
        ax.apply_aspect(locator(ax, renderer) if locator else None)
    order = []
    children = [a for a in fig.get_children() if a is not fig.patch and not a.get_animated()]
    for artist in sorted(children, key=lambda a: a.get_zorder()):
        if not isinstance(artist, Axes):
            order.append((artist, None))
            continue
        ax = artist
        if not ax.get_visible():
            continue
        ax.viewLim                                     # noqa: B018 - brings autoscaled limits up to date
        locator = ax.get_axes_locator()
        ax.apply_aspect(locator(ax, renderer) if locator else None)
        if hasattr(ax, "_update_title_position"):
            ax._update_title_position(renderer)
        framed = ax.axison and ax.get_frame_on()
        skip = {ax.patch, *(ax.spines.values() if not framed else ()), *((ax.xaxis, ax.yaxis) if not ax.axison else ())}
        inner = sorted((a for a in ax.get_children() if a not in skip), key=lambda a: a.get_zorder())
        order += [(a, ax) for a in ([ax.patch] if framed else []) + inner]
    return order


def _static_key(artist, ax) -> tuple | None:
    """What a static candidate's pixels depend on, or None for a dynamic artist."""
    if ax is None:
        return None
    if artist is ax.patch:
        return ("patch", ax.bbox.bounds, _patch_key(artist))
    if isinstance(artist, Axis):
        return _axis_key(artist, ax)
    if isinstance(artist, Legend) and getattr(artist, "_loc", 0) != 0:   # not loc="best": placed by the data
        texts = tuple((t.get_text(), t.get_color(), t.get_fontsize()) for t in artist.get_texts())
        return ("legend", id(artist), artist.get_visible(), artist.get_zorder(), texts, ax.bbox.bounds,
                artist.get_bbox_to_anchor().bounds, repr(artist._loc))
    return None


def _patch_key(patch) -> tuple:
    return (patch.get_visible(), to_rgba(patch.get_facecolor()), to_rgba(patch.get_edgecolor()),
            patch.get_linewidth(), patch.get_hatch(), patch.get_alpha(), patch.get_zorder())


def _axis_key(axis: Axis, ax: Axes) -> tuple:
    major, minor = axis.get_majorticklocs(), axis.get_minorticklocs()
    formatter = axis.get_major_formatter()
    labels = tuple(formatter.format_ticks(major)), tuple(axis.get_minor_formatter().format_ticks(minor))
    offset = formatter.get_offset() if hasattr(formatter, "get_offset") else ""
    ticks = tuple((t.label1.get_visible(), t.label1.get_rotation(), t.label1.get_fontsize(), t.label1.get_color(),
                   t.label2.get_visible()) for t in axis.majorTicks[:len(major) + 1])
    label = axis.label
    return ("axis", axis.axis_name, axis.get_visible(), axis.get_zorder(), axis.get_scale(),
            tuple(axis.get_view_interval()), ax.bbox.bounds, tuple(major), tuple(minor), labels, offset, ticks,
            repr(getattr(axis, "_major_tick_kw", None)), repr(getattr(axis, "_minor_tick_kw", None)),
            label.get_text(), label.get_visible(), label.get_position(), label.get_fontsize(), label.get_color(),
            label.get_rotation(), tuple(s.get_position() for s in ax.spines.values()))


def _extent(artist, ax: Axes, renderer) -> tuple:
    """Boxes covering every pixel a static candidate may touch (padded: a larger area only costs time)."""
    px = ax.figure.dpi / 72
    if isinstance(artist, Axis):
        return _axis_boxes(artist, ax, renderer)
    if isinstance(artist, Legend):
        return (artist.get_window_extent(renderer).padded(8 * px),)
    return (ax.bbox.padded(2 + artist.get_linewidth() * px),)


def _axis_boxes(axis: Axis, ax: Axes, renderer) -> tuple:
    """An axis draws its tick labels and label (its tight box), tick marks in a strip along each side that
    has them, and grid lines across the axes when they are on."""
    boxes = [axis.get_tightbbox(renderer)]
    tick = axis.majorTicks[0]
    b, pad = ax.bbox, (axis.get_tick_padding() + 4) * ax.figure.dpi / 72
    if tick.gridline.get_visible():
        boxes.append(b.padded(pad))
    for line, side in ((tick.tick1line, 0), (tick.tick2line, 1)):
        if not line.get_visible():
            continue
        if axis.axis_name == "x":
            y = (b.y0, b.y1)[side]
            boxes.append(Bbox.from_extents(b.x0 - pad, y - pad, b.x1 + pad, y + pad))
        else:
            x = (b.x0, b.x1)[side]
            boxes.append(Bbox.from_extents(x - pad, b.y0 - pad, x + pad, b.y1 + pad))
    return tuple(box.padded(2) for box in boxes if box is not None)


def _overlaps(boxes, others) -> bool:
    """Whether any of `boxes` overlaps (or touches) any of `others` (as `Bbox.overlaps`, all at once)."""
    if not boxes or not others:
        return False
    a = np.array([b.extents for b in boxes])[:, None, :]       # (n, 1, 4) x0 y0 x1 y1
    o = np.array([b.extents for b in others])[None, :, :]      # (1, m, 4)
    return bool(((o[..., 2] >= a[..., 0]) & (o[..., 0] <= a[..., 2])
                 & (o[..., 3] >= a[..., 1]) & (o[..., 1] <= a[..., 3])).any())


def _footprint(artist, renderer) -> Bbox:
    """Pixels a dynamic artist may touch: its clip box, or its extent padded; the whole figure when
    neither is known."""
    fig = artist.get_figure(root=True) if hasattr(artist, "get_figure") else artist.figure
    if isinstance(artist, Spine) and artist.get_position() == ("outward", 0.0) and artist.axes is not None:
        return artist.axes.bbox.padded(2 + artist.get_linewidth() * fig.dpi / 72)   # on the axes' edge
    if isinstance(artist, Text) and artist.get_bbox_patch() is None:
        return artist.get_window_extent(renderer).padded(2)
    try:
        lw = getattr(artist, "get_linewidth", lambda: 0)()
        lw = float(np.max(lw)) if np.size(lw) else 0.0
        box = artist.get_window_extent(renderer)
        if not np.isfinite(box.bounds).all():
            return fig.bbox
        return box.padded(1 + lw * fig.dpi / 72)     # half the line width out of its path, and anti-aliasing
    except Exception:   # an artist that cannot say where it draws: assume everywhere
        return fig.bbox


def _opaque(fig: Figure) -> bool:
    return fig.patch.get_visible() and to_rgba(fig.patch.get_facecolor(), fig.patch.get_alpha())[3] == 1


def encode_png(rgba: np.ndarray, compress_level: int = 1, opaque: bool = False) -> bytes:
    """(rows, cols, 4) uint8 pixels as PNG bytes: rows unfiltered, deflated at `compress_level` (1: ~5 ms
    for 864 x 306, twice as fast as PIL's adaptive filters at level 1, and as small for plots); RGB
    when `opaque` (every alpha 255). Lossless: decodes to the same pixels.

    >>> encode_png(np.zeros((2, 3, 4), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    pixels = rgba[..., :3] if opaque else rgba
    rows, cols, channels = pixels.shape
    raw = np.zeros((rows, cols * channels + 1), np.uint8)   # each row: filter type 0, then its bytes
    raw[:, 1:] = pixels.reshape(rows, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", cols, rows, 8, 2 if opaque else 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level)) + chunk(b"IEND", b""))


# -- text cache -------------------------------------------------------------------------------------
_TEXTS: OrderedDict = OrderedDict()   # key -> [(glyph image, x, y, angle)]: draw_text_image calls to replay
_TEXTS_SIZE = 8192


class _GlyphRecorder:
    """Stands in for RendererAgg's C++ renderer while a text is drawn: passes every call on and keeps
    a copy of each image `draw_text_image` blends. Any other call makes the text not replayable."""

    def __init__(self, real):
        self._real, self.calls, self.replayable = real, [], True

    def draw_text_image(self, image, x, y, angle, gc):
        self._real.draw_text_image(image, x, y, angle, gc)
        try:
            self.calls.append((np.array(image, dtype=np.uint8, copy=True), x, y, angle))
        except (TypeError, ValueError):
            self.replayable = False

    def __getattr__(self, name):
        self.replayable = False
        return getattr(self._real, name)


class _CachedTextRenderer(RendererAgg):
    """RendererAgg whose `draw_text` records matplotlib's own glyph draws for a plain text the first time
    and replays them for the same string, font, angle and position: the same pixels, ~20x faster.
    Mathtext goes matplotlib's way every time."""

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if ismath:
            return super().draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
        key = _text_key(self, gc, x, y, s, prop, angle, mtext)
        calls = _TEXTS.get(key)
        if calls is not None:
            _TEXTS.move_to_end(key)
            for image, ix, iy, a in calls:
                self._renderer.draw_text_image(image, ix, iy, a, gc)
            return None
        real = self._renderer
        recorder = self._renderer = _GlyphRecorder(real)
        try:
            super().draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
        finally:
            self._renderer = real
        if recorder.replayable:
            _TEXTS[key] = recorder.calls
            while len(_TEXTS) > _TEXTS_SIZE:
                _TEXTS.popitem(last=False)
        return None


def _text_key(renderer, gc, x, y, s, prop, angle, mtext) -> tuple:
    """Everything matplotlib's glyph draws for a text depend on, except the gc (colour, alpha, clip),
    which the replay passes as it is then."""
    families = tuple(prop.get_family())
    extra = tuple(getattr(mtext, f"get_{attr}", lambda: None)() for attr in ("fontfeatures", "language"))
    return (s, x, y, angle, families, tuple(tuple(rcParams.get(f"font.{f}", ())) for f in families),
            prop.get_style(), prop.get_variant(), prop.get_weight(), prop.get_stretch(), prop.get_size_in_points(),
            prop.get_file(), renderer.dpi, renderer.height, get_hinting_flag(), rcParams["text.hinting_factor"],
            gc.get_antialiased(), tuple(tuple(e) if isinstance(e, list) else e for e in extra))


class CachedTextCanvas(FigureCanvasAgg):
    """FigureCanvasAgg whose renderer replays each text's recorded glyph draws (see the module)."""

    def get_renderer(self):
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if getattr(self, "_text_renderer_key", None) != key:
            self.renderer = _CachedTextRenderer(w, h, self.figure.dpi)
            self._text_renderer_key = key
        return self.renderer
