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
  Which artists are static, what their pixels follow from, and where they draw: `qlearn.plots._static`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox

from ._static import empty, footprint, overlaps, patch_key, pixels, static_key
from ._static import extent as artist_extent
from ._textcache import _TEXTS, CachedTextCanvas, encode_png  # noqa: F401 - re-exported

__all__ = ["FastRenderer", "CachedTextCanvas", "encode_png"]

_TILES_BYTES = 24 * 2 ** 20          # background tiles kept per renderer


class FastRenderer:
    """PNG bytes of a figure that is redrawn often, equal pixel for pixel to a full render.

    `render()` leaves the frame in the canvas buffer; `png()` encodes it. Counters for tests and
    benchmarks: `full_draws` (backgrounds rendered whole), `axes_draws` (static artists rendered again
    in part of the background; `redrawn`: those of the last frame), `tile_hits`, `frames`.

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
        self._tiles: OrderedDict = OrderedDict()      # (pixel rect, keys of the static artists in it) -> pixels
        self._extents: OrderedDict = OrderedDict()    # (static candidate, key) -> extent, for states seen before
        self.full_draws = self.axes_draws = self.frames = self.tile_hits = 0
        self.redrawn: list = []                       # static artists rendered again in the last frame

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
        size = (canvas.get_width_height(physical=True), fig.dpi, patch_key(fig.patch))
        if self._background is None or size != self._size:
            fig.draw_without_rendering()    # lays legends and colorbars out: their extents are right from now on
            self._extents.clear()
        order = _draw_order(fig, renderer)
        units, dynamic = self._split(order, renderer)
        self.redrawn = []
        if self._background is None or size != self._size:
            self._static_pass(renderer, order, units, None)
        else:
            rects = [box for a, (key, ext) in units.items() if self._units.get(a, (None,))[0] != key
                     for box in ext + self._units.get(a, (None, ()))[1]]      # where it is now and was before
            rects += [box for a, (_, ext) in self._units.items() if a not in units for box in ext]
            if rects:
                self._update(renderer, order, units, rects)
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
            key = static_key(artist, ax)
            if key is not None:
                extent = self._extent(artist, ax, key, renderer)
                footprints += [footprint(a, renderer) for a in pending]   # computed only when a check needs them
                pending = []
                if not overlaps(extent, footprints):
                    units[artist] = (key, extent)
                    continue
                footprints += extent
            elif not artist.get_visible() or empty(artist):
                continue                        # draws nothing
            elif artist.get_clip_on() and artist.get_clip_box() is not None:
                clip = artist.get_clip_box()     # Agg touches no pixel outside a clip box
                if id(clip) not in clips:
                    clips.add(id(clip))
                    footprints.append(pixels(clip, 0.5))
            else:
                pending.append(artist)
            dynamic.append(artist)
        return units, dynamic

    def _extent(self, artist, ax, key, renderer) -> tuple:
        """`_static.extent` of a static candidate, remembered per state (a slider dragged back finds it)."""
        extent = self._extents.get((artist, key))
        if extent is None:
            extent = artist_extent(artist, ax, renderer)
            if isinstance(artist, Legend) and artist.stale:
                return extent               # the whole box until it has drawn: then each entry
            self._extents[artist, key] = extent
            while len(self._extents) > 1024:
                self._extents.popitem(last=False)
        return extent

    def _update(self, renderer, order: list, units: dict, rects: list) -> None:
        """Bring the background up to date within `rects`: each from the tile cache when the static artists
        reaching into it were in the same states before (a slider dragged back), else rendered."""
        height, width = self._background.shape[:2]
        keys = [u[0] for u in units.values()]
        owner = np.array([i for i, u in enumerate(units.values()) for _ in u[1]], dtype=int)
        boxes = np.array([b.extents for u in units.values() for b in u[1]]).reshape(-1, 4)
        missing = []
        for r in rects:
            r0, r1 = max(0, int(np.floor(height - r.y1))), min(height, int(np.ceil(height - r.y0)))
            c0, c1 = max(0, int(np.floor(r.x0))), min(width, int(np.ceil(r.x1)))
            if r0 >= r1 or c0 >= c1:
                continue
            box = Bbox.from_extents(c0, height - r1, c1, height - r0)        # whole pixels, display coordinates
            x0, y0, x1, y1 = box.extents
            inside = (boxes[:, 2] >= x0) & (boxes[:, 0] <= x1) & (boxes[:, 3] >= y0) & (boxes[:, 1] <= y1)
            key = ((r0, r1, c0, c1), tuple(keys[i] for i in sorted(set(owner[inside].tolist()))))
            tile = self._tiles.get(key)
            if tile is None:
                missing.append((key, box))
                continue
            self._tiles.move_to_end(key)
            self._background[r0:r1, c0:c1] = tile
            self.tile_hits += 1
        if not missing:
            return
        buffer = self._static_pass(renderer, order, units, [box for _, box in missing])
        for key, _ in missing:
            r0, r1, c0, c1 = key[0]
            tile = self._tiles[key] = buffer[r0:r1, c0:c1].copy()
            self._background[r0:r1, c0:c1] = tile
        while sum(t.nbytes for t in self._tiles.values()) > _TILES_BYTES:
            self._tiles.popitem(last=False)

    def _static_pass(self, renderer, order: list, units: dict, rects: list | None) -> np.ndarray:
        """Render the figure's face and the static artists (those reaching into `rects`; all when None) on
        the canvas; keep it as the background when whole. Returns the canvas's pixels."""
        buffer = np.asarray(self.canvas.buffer_rgba())
        renderer.clear()
        self.fig.patch.draw(renderer)
        for artist, _ in order:
            unit = units.get(artist)
            if unit is not None and (rects is None or overlaps(unit[1], rects)):
                artist.draw(renderer)
                if rects is not None:
                    self.axes_draws += 1
                    self.redrawn.append(artist)
        if rects is None:
            self._background = buffer.copy()
            self.full_draws += 1
        return buffer

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


def _opaque(fig: Figure) -> bool:
    return fig.patch.get_visible() and to_rgba(fig.patch.get_facecolor(), fig.patch.get_alpha())[3] == 1


