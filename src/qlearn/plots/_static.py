"""What the fast renderer needs to know of each artist: whether it can stay in the still background (and
the state its pixels follow from: its key), and which pixels it may touch (its extent or footprint).

Static candidates are an axes' patch, its axes (ticks, tick labels, axis label), legends, images and meshes,
texts and annotations without arrows; every other artist is drawn each frame. Boxes are in display pixels,
whole pixels, half open: [x0, x1) x [y0, y1), grown generously (a box too big costs only time; one too small
would let a frame differ from a full render, which tests/test_frames.py checks on every explorer).
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import Collection, QuadMesh
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.spines import Spine
from matplotlib.text import Annotation, Text
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Bbox

__all__ = ["static_key", "extent", "footprint", "pixels", "overlaps", "empty", "patch_key"]

_SIDES = ("left", "right", "bottom", "top")   # spines with a position (a colorbar's outline has none)


def static_key(artist, ax) -> tuple | None:
    """What a static candidate's pixels depend on, or None for a dynamic artist."""
    if type(artist) is Text:                  # titles, labels
        return _text_state(artist)
    if ax is None:
        return None
    if type(artist) is Annotation and artist.arrow_patch is None:    # placed at a data point: the view matters
        state = _text_state(artist, placed=False)
        return state and ("annotation", state, _frozen(artist.xy), _frozen(artist.xyann), repr(artist.xycoords),
                          repr(artist.anncoords), ax.viewLim.bounds, ax.bbox.bounds, ax.get_xscale(), ax.get_yscale())
    if isinstance(artist, (AxesImage, QuadMesh)):
        return _mesh_key(artist, ax)
    if artist is ax.patch:
        return ("patch", ax.bbox.bounds, patch_key(artist))
    if isinstance(artist, Axis):
        return _axis_key(artist, ax)
    if isinstance(artist, Legend) and getattr(artist, "_loc", 0) != 0:   # not loc="best": placed by the data
        texts = tuple((t.get_text(), t.get_color(), t.get_fontsize()) for t in artist.get_texts())
        return ("legend", id(artist), artist.get_visible(), artist.get_zorder(), texts, ax.bbox.bounds,
                artist.get_bbox_to_anchor().bounds, repr(artist._loc))
    return None


def _text_state(t: Text, placed: bool = True) -> tuple | None:
    """A text's string, font, colour, alignment and (when `placed`) its anchor in pixels; None for a text
    with a box, TeX or path effects (drawn every frame)."""
    if t.get_bbox_patch() is not None or t.get_usetex() or t.get_path_effects():
        return None
    prop = t.get_fontproperties()
    clip = t.get_clip_box() if t.get_clip_on() else None
    extra = tuple(getattr(t, f"get_{attr}", lambda: None)() for attr in ("fontfeatures", "language"))
    where = tuple(t.get_transform().transform(t.get_unitless_position())) if placed else None
    return ("text", t.get_text(), t.get_visible(), t.get_zorder(), where, t.get_rotation(), t.get_rotation_mode(),
            t.get_horizontalalignment(), t.get_verticalalignment(), t._multialignment, t._linespacing, t.get_wrap(),
            t.get_transform_rotates_text(), tuple(prop.get_family()), prop.get_style(), prop.get_variant(),
            prop.get_weight(), prop.get_stretch(), prop.get_size_in_points(), prop.get_file(),
            to_rgba(t.get_color()), t.get_alpha(), None if clip is None else tuple(clip.bounds), repr(extra))


def _mesh_key(artist, ax) -> tuple:
    """An image's or a mesh's pixels: its values, colour map and norm, where they sit and the view."""
    values = np.ma.asarray(artist.get_array())
    norm, clip = artist.norm, artist.get_clip_box() if artist.get_clip_on() else None
    coords = artist.get_coordinates().tobytes() if isinstance(artist, QuadMesh) else _frozen(artist.get_extent())
    return ("mesh", id(artist), artist.get_visible(), artist.get_zorder(), values.shape, hash(values.data.tobytes()),
            hash(np.ma.getmaskarray(values).tobytes()), hash(coords), type(norm).__name__, norm.vmin, norm.vmax,
            artist.get_cmap().name, id(artist.get_cmap()), artist.get_alpha(), ax.viewLim.bounds, ax.bbox.bounds,
            None if clip is None else tuple(clip.bounds), _frozen(getattr(artist, "get_interpolation", lambda: None)()),
            _frozen(artist.get_edgecolor()) if isinstance(artist, QuadMesh) else None)


def empty(artist) -> bool:
    """A collection with no paths or a line with no points: it draws nothing."""
    if isinstance(artist, Collection):
        return len(artist.get_paths()) == 0
    if isinstance(artist, Line2D):
        return len(artist.get_xdata(orig=False)) == 0
    return False


def patch_key(patch) -> tuple:
    return (patch.get_visible(), to_rgba(patch.get_facecolor()), to_rgba(patch.get_edgecolor()),
            patch.get_linewidth(), patch.get_hatch(), patch.get_alpha(), patch.get_zorder())


def _axis_key(axis: Axis, ax: Axes) -> tuple:
    """An axis's pixels follow from its limits, scale and place, where its locators put ticks (the tick
    positions, and the locators' and formatters' settings: their labels follow from those), the ticks' and
    the label's looks. (Formatting the labels here would cost ~0.5 ms an axis, each frame.)"""
    minor = () if isinstance(axis.get_minor_locator(), NullLocator) else tuple(axis.get_minorticklocs())
    tickers = tuple((id(f), type(f).__name__, _settings(f)) for f in (
        axis.get_major_locator(), axis.get_major_formatter(), axis.get_minor_locator(), axis.get_minor_formatter()))
    t = axis.majorTicks[0]                      # (ticks made later copy its properties)
    ticks = (t.label1.get_visible(), t.label1.get_rotation(), t.label1.get_fontsize(), t.label1.get_color(),
             t.label2.get_visible(), t.tick1line.get_visible(), t.tick2line.get_visible(), t.gridline.get_visible())
    label = axis.label
    return ("axis", axis.axis_name, axis.get_visible(), axis.get_zorder(), axis.get_scale(),
            tuple(axis.get_view_interval()), ax.bbox.bounds, tuple(axis.get_majorticklocs()), minor, tickers, ticks,
            _frozen(getattr(axis, "_major_tick_kw", {})), _frozen(getattr(axis, "_minor_tick_kw", {})),
            label.get_text(), label.get_visible(), label.get_position(), label.get_fontsize(), label.get_color(),
            label.get_rotation(), tuple(s.get_position() for s in ax.spines.values() if s.spine_type in _SIDES))


# what a formatter works out from the ticks it is handed (set_locs): not settings
_DERIVED = {"axis", "locs", "offset", "orderOfMagnitude", "format", "_usetex", "_locs", "_offset", "_orderOfMagnitude",
            "_format"}


def _settings(obj) -> tuple:
    """A locator's or formatter's settings (its attributes, hashable): changed by set_params."""
    return tuple((k, _frozen(v)) for k, v in vars(obj).items() if k not in _DERIVED and not callable(v))


def _frozen(v):
    if isinstance(v, np.ndarray):
        return tuple(np.ravel(v).tolist())
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _frozen(x)) for k, x in v.items())
    try:
        hash(v)
    except TypeError:
        return repr(v)
    return v


def extent(artist, ax: Axes | None, renderer) -> tuple:
    """Boxes covering every pixel a static candidate may touch (padded: a larger area only costs time)."""
    px = artist.get_figure(root=True).dpi / 72
    if isinstance(artist, Axis):
        return _axis_boxes(artist, ax, renderer)
    if isinstance(artist, Legend):            # its frame when it has one, else each text and handle
        frame, handles = artist.get_frame(), getattr(artist, "legend_handles", None)   # (matplotlib >= 3.7)
        if artist.get_frame_on() or handles is None or artist.stale:   # (entries are placed when it draws)
            return (pixels(Bbox.union([artist.get_window_extent(renderer), frame.get_window_extent(renderer)]),
                            1 + frame.get_linewidth() * px),)
        return tuple(pixels(a.get_window_extent(renderer), 1 + _linewidth(a) * px / 2 + _marker(a) * px)
                     for a in [*artist.get_texts(), *handles])
    if isinstance(artist, Text):               # a glyph's ink stays in the font's ascent / descent box, give or take
        return (pixels(artist.get_window_extent(renderer), 1),)   # anti-aliasing
    if isinstance(artist, (AxesImage, QuadMesh)):
        clip = artist.get_clip_box() if artist.get_clip_on() else None
        return (pixels(clip if clip is not None else artist.get_window_extent(renderer), 1),)
    return (pixels(ax.bbox, 1 + artist.get_linewidth() * px),)


def _axis_boxes(axis: Axis, ax: Axes, renderer) -> tuple:
    """An axis draws, for each tick in view, its tick marks, grid line and labels, plus the axis label and
    offset text: a box for each (laid out as a draw lays them out)."""
    if not axis.get_visible():
        return ()
    if not hasattr(axis, "_update_ticks"):        # (private in matplotlib 3.10 / 3.11): the axes and all round it
        return (pixels(Bbox.union([ax.bbox.padded(axis.get_tick_padding() * ax.figure.dpi / 72 + 4),
                                    axis.get_tightbbox(renderer)]), 1),)
    axis.get_tightbbox(renderer)                   # lays the ticks and labels out, as a draw does
    px = ax.figure.dpi / 72
    texts, boxes = [axis.label, axis.offsetText], []
    for tick in axis._update_ticks():
        texts += [tick.label1, tick.label2]
        for mark in (tick.tick1line, tick.tick2line):     # a mark runs across the axis, up to its marker size
            if mark.get_visible():                          # either way (in / out), its edge width along it
                (x, y), = mark.get_transform().transform(np.column_stack(mark.get_data()))
                across, along = mark.get_markersize() * px + 1, mark.get_markeredgewidth() * px / 2 + 1
                w, h = (along, across) if axis.axis_name == "x" else (across, along)
                boxes.append(pixels(Bbox.from_extents(x - w, y - h, x + w, y + h), 0.5))
        if tick.gridline.get_visible():
            boxes.append(pixels(tick.gridline.get_window_extent(renderer), 1 + tick.gridline.get_linewidth() * px))
    boxes += [pixels(t.get_window_extent(renderer), 1) for t in texts if t.get_visible() and t.get_text()]
    return tuple(boxes)


def _linewidth(artist) -> float:
    lw = getattr(artist, "get_linewidth", lambda: 0)()
    return float(np.max(lw)) if np.size(lw) else 0.0


def _marker(artist) -> float:
    """A handle's marker size in points (collections: the largest, from its area), 0 without markers."""
    if isinstance(artist, Line2D):
        return artist.get_markersize() if artist.get_marker() not in (None, "None", "", " ") else 0.0
    sizes = getattr(artist, "get_sizes", lambda: [])()
    return float(max(sizes)) ** 0.5 if len(sizes) else 0.0


def pixels(box: Bbox, pad: float) -> Bbox:
    """`box` grown by `pad` and out to whole pixels: the pixels [x0, x1) x [y0, y1) it may touch."""
    x0, y0, x1, y1 = box.extents
    return Bbox.from_extents(np.floor(x0 - pad), np.floor(y0 - pad), np.ceil(x1 + pad), np.ceil(y1 + pad))


def overlaps(boxes, others) -> bool:
    """Whether any of the pixel boxes `boxes` shares a pixel with any of `others` (all at once)."""
    if not boxes or not others:
        return False
    a = np.array([b.extents for b in boxes])[:, None, :]       # (n, 1, 4) x0 y0 x1 y1
    o = np.array([b.extents for b in others])[None, :, :]      # (1, m, 4)
    return bool(((o[..., 2] > a[..., 0]) & (o[..., 0] < a[..., 2])
                 & (o[..., 3] > a[..., 1]) & (o[..., 1] < a[..., 3])).any())


def footprint(artist, renderer) -> Bbox:
    """Pixels a dynamic artist may touch: its extent (a spine: its edge of the axes) grown by half its line
    width (a stroke, a projecting cap) and half a pixel (Agg snaps straight lines to pixel centres), out to
    whole pixels (anti-aliasing only shades pixels the shape reaches into); the whole figure when it cannot say."""
    fig = artist.get_figure(root=True) if hasattr(artist, "get_figure") else artist.figure
    lw = getattr(artist, "get_linewidth", lambda: 0)()
    pad = 0.5 + (float(np.max(lw)) if np.size(lw) else 0.0) * fig.dpi / 72 / 2
    if (isinstance(artist, Spine) and artist.spine_type in _SIDES
            and artist.get_position() == ("outward", 0.0) and artist.axes is not None):
        x0, y0, x1, y1 = artist.axes.bbox.extents
        edge = {"left": (x0, y0, x0, y1), "right": (x1, y0, x1, y1), "bottom": (x0, y0, x1, y0),
                "top": (x0, y1, x1, y1)}[artist.spine_type]
        return pixels(Bbox.from_extents(*edge), pad)
    if isinstance(artist, Text) and artist.get_bbox_patch() is None:
        return pixels(artist.get_window_extent(renderer), 1)
    try:
        box = artist.get_window_extent(renderer)
        return pixels(box, pad) if np.isfinite(box.extents).all() else fig.bbox
    except Exception:   # an artist that cannot say where it draws: assume everywhere
        return fig.bbox


