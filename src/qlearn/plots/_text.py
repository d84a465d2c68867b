"""An Agg canvas that caches rendered text, so redrawing tick labels and titles is cheap.

Matplotlib (3.11) lays out and rasterizes every glyph of every text on every draw, which is most
of the time of redrawing a small figure (a tick label ~1.5 ms, a two-line title ~8 ms on a
2-core machine). Here a text's glyph bitmaps are kept per (string, font, angle, dpi, hinting),
rendered once at a whole-pixel position and stamped again at any whole-pixel position (text may
move by up to half a pixel, which the eye does not see). Mathtext and text with font features
take matplotlib's own path.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag

__all__ = ["CachedTextCanvas"]

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 4096


class _Recorder:
    """Stands in for the C++ renderer while a text is drawn: keeps each glyph bitmap it stamps."""

    def __init__(self, real, out: list):
        self._real, self._out = real, out

    def draw_text_image(self, image, x, y, angle, gc):
        self._out.append((np.array(image, copy=True), int(x), int(y)))
        self._real.draw_text_image(image, x, y, angle, gc)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _CachedTextRenderer(RendererAgg):
    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        plain = not ismath and (mtext is None or not (mtext.get_fontfeatures() or mtext.get_language()))
        if not plain:
            return super().draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
        xi, yi = round(x), round(y)
        key = (s, hash(prop), prop.get_size_in_points(), angle, self.dpi, get_hinting_flag(), gc.get_antialiased())
        glyphs = _CACHE.get(key)
        if glyphs is None:
            recorded: list = []
            real, self._renderer = self._renderer, _Recorder(self._renderer, recorded)
            try:
                super().draw_text(gc, xi, yi, s, prop, angle, ismath=False, mtext=mtext)
            finally:
                self._renderer = real
            _CACHE[key] = [(image, bx - xi, by - yi) for image, bx, by in recorded]
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
            return None
        _CACHE.move_to_end(key)
        for image, dx, dy in glyphs:
            self._renderer.draw_text_image(image, xi + dx, yi + dy, 0, gc)
        return None


class CachedTextCanvas(FigureCanvasAgg):
    """FigureCanvasAgg whose renderer caches text bitmaps (see the module docstring)."""

    def get_renderer(self):
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if self._lastKey != key:
            self.renderer = _CachedTextRenderer(w, h, self.figure.dpi)
            self._lastKey = key
        return self.renderer
