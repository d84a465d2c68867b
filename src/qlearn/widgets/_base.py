"""The explorer base: a VBox that owns its controls, a figure shown as PNG, and a message area.

Only core widgets present in both ipywidgets 7.7 (Colab) and 8.x (JupyterLab 4, Notebook 7,
VS Code, Voila) are used: VBox/HBox, Image, HTML and the value controls. The figure is a
`matplotlib.figure.Figure` rendered to PNG bytes into an `ipywidgets.Image`, so no ipympl and no
`%matplotlib widget` are needed. A control change calls `update()`; tests call `update(**params)`.
Errors raised while drawing are caught and shown in the message area, never as a traceback.

Live sliders (`continuous_update=True`): a change that arrives from the front end (a `comm_msg`) does not
draw at once. It is noted, and the redraw is scheduled on the kernel's event loop after the loop has
turned twice with no further change, so changes already queued behind it (ipykernel reads one shell
message per turn) are absorbed first and one redraw shows the latest values: at most one redraw in
flight, no queue of stale frames. (The front end helps: ipywidgets keeps one update per widget in flight
and merges the rest.) A change made from Python (a cell, a test) redraws before the assignment returns.
"""

from __future__ import annotations

import base64
import html
import time
import warnings
from collections import OrderedDict

import ipywidgets as widgets
import torch
from torch import nn

from .. import _threads, sources
from ..plots import to_png
from ..plots._base import plain_agg
from ..plots._fastrender import FastRenderer

__all__ = ["Explorer", "SourceControls"]

_WIDE = {"description_width": "initial"}
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# ipywidgets 7.x (Colab) has no Widget._repr_mimebundle_: widgets display themselves through
# _ipython_display_, which IPython prefers to any _repr_mimebundle_ a subclass defines.
_IPYWIDGETS_7 = not hasattr(widgets.Widget, "_repr_mimebundle_")


def slider_layout(width: str = "260px") -> widgets.Layout:
    return widgets.Layout(width=width)


class Explorer(widgets.VBox):
    """Base class: subclasses set `name`, build `controls` and a plots view, and implement
    `_draw(values)` (values = {control name: value}) calling math then `self.view.update(...)`.

    Attributes: controls (name -> control), figure (the Figure redrawn in place), image (the PNG
    widget), message (HTML: errors and notes), error (last error text or None), renderer ("fast"
    or "agg": how the PNG is made, a class attribute an instance may override).
    """

    name = "explorer"
    # torch threads during a redraw (None: leave as is). Explorer callbacks work on tensors of 1e4..1e6 values;
    # on the 2-core machines learners get (Colab, Binder) and on any busy machine, handing such small ops to a
    # second thread costs more than it saves (measured under load: abs of 1M values 0.2 ms on 1 thread, 8 on 2)
    threads: int | None = 1
    renderer: str = "fast"    # how the PNG is made: "fast" or "agg" (see _render_png)

    def __init__(self, controls: dict, view, title: str = "", before: tuple = (), after: tuple = (),
                 canvas: str = "png"):
        if canvas not in ("png", "ipympl"):
            raise ValueError(f"canvas must be 'png' (works everywhere) or 'ipympl' (pan/zoom where "
                             f"ipympl is installed); got {canvas!r}")
        self.controls = dict(controls)
        self.view = view
        self.figure = view.fig
        self._fast: FastRenderer | None = None
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.canvas = _ipympl_canvas(self.figure) if canvas == "ipympl" else None
        self.message = widgets.HTML(value="")
        self.error: str | None = None
        self._busy = False
        self._changes, self._scheduled = 0, False     # front-end changes seen; a redraw waiting on the loop
        header = widgets.HTML(value=f"<b>{html.escape(title)}</b>") if title else None
        bar = widgets.HBox(list(self.controls.values()),
                           layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        shown = self.canvas if self.canvas is not None else self.image
        children = [header, bar, *before, shown, *after, self.message]
        super().__init__([w for w in children if w is not None])
        self.add_class("qlearn-explorer")
        self.add_class(f"qlearn-{self.name.replace('_', '-')}")
        bar.add_class("qlearn-controls")
        shown.add_class("qlearn-figure")
        self.message.add_class("qlearn-message")
        for key, control in self.controls.items():
            control.add_class("qlearn-control")
            control.add_class(f"qlearn-control-{key.replace('_', '-')}")
            if hasattr(control, "value"):
                control.observe(self._on_change, names="value")

    # -- driving -------------------------------------------------------------------------------
    def values(self) -> dict:
        """Current value of every control that has one."""
        return {k: c.value for k, c in self.controls.items() if hasattr(c, "value")}

    def update(self, **params) -> Explorer:
        """Set the given controls (by name) and redraw once; what a control change calls.

        Values outside a slider's range are clamped by the slider (and said so in the message);
        an unknown name, a value a dropdown does not offer, or an error while drawing shows a
        message in the explorer instead of raising.
        """
        notes: list[str] = []
        self._busy = True
        with _threads.threads(self.threads):
            self._update(params, notes)
        return self

    def _update(self, params: dict, notes: list[str]) -> None:
        try:
            unknown = sorted(set(params) - set(self.controls))
            if unknown:
                raise ValueError(f"unknown control(s) {', '.join(map(repr, unknown))}; "
                                 f"this explorer has {', '.join(self.controls)}")
            clamped = {key: value for key, value in params.items() if not self._set(key, value)}
            self._draw(self.values())
            # a range may depend on other controls (e.g. the block slider's max on the blocksize):
            # values clamped before the draw get one more try against the new ranges
            if clamped:
                before = self.values()
                for key, value in clamped.items():
                    self._set(key, value)
                if self.values() != before:
                    self._draw(self.values())
            notes += [self._clamp_note(k, clamped[k]) for k in clamped if self.controls[k].value != clamped[k]]
            self.show_figure()
            self._show(notes=notes)
        except Exception as exc:   # shown to the learner, not raised: a widget callback has no caller
            self._show(error=exc, notes=notes)
        finally:
            self._busy = False

    def show_figure(self) -> None:
        """Put the figure's current state on screen: new PNG bytes, or an ipympl redraw."""
        if self.canvas is not None:
            self.canvas.draw_idle()
        else:
            self.image.value = self._render_png()

    def _render_png(self) -> bytes:
        """PNG bytes of the figure. renderer "agg": matplotlib's plain FigureCanvasAgg + savefig, nothing of
        ours (80-120 ms of CPU for a three-panel explorer: 3-4 frames' time); "fast" (default):
        `qlearn.plots._fastrender.FastRenderer`, the same pixels (tests/test_frames.py) drawing only what
        moved. benchmarks/bench_widgets.py measures both."""
        if self.renderer == "fast":
            if self._fast is None or self._fast.canvas is not self.figure.canvas:   # (renderer switched)
                self._fast = FastRenderer(self.figure)
            return self._fast.png()
        if self.renderer != "agg":
            raise ValueError(f"renderer must be 'agg' or 'fast'; got {self.renderer!r}")
        plain_agg(self.figure)
        return to_png(self.figure)

    def _on_change(self, change) -> None:
        if self._busy:
            return
        loop = _frontend_loop()
        if loop is None:                  # from Python: redraw now
            self.update()
            return
        self._changes += 1
        if not self._scheduled:
            self._scheduled = True
            loop.add_callback(self._flush, loop, self._changes, 0, time.monotonic())

    def _flush(self, loop, seen: int, quiet: int, started: float) -> None:
        """Redraw once the loop has turned twice without a new change (queued changes absorbed), or
        after 50 ms of changes arriving back to back (so the picture keeps moving)."""
        quiet = quiet + 1 if self._changes == seen else 0
        if quiet < 2 and time.monotonic() - started < 0.05:
            loop.add_callback(self._flush, loop, self._changes, quiet, started)
            return
        self._scheduled = False
        self.update()

    def _set(self, key: str, value) -> bool:
        """Set one control; False when the control clamped the value to its range."""
        control = self.controls[key]
        options = getattr(control, "options", None)
        if options is not None and not isinstance(control, widgets.Combobox):
            allowed = [o[1] if isinstance(o, tuple) else o for o in options]
            if value not in allowed:
                raise ValueError(f"{key}={value!r} is not offered; choose one of {allowed}")
        try:
            control.value = value
        except Exception as exc:
            raise ValueError(f"{key}={value!r} is not allowed: {exc}") from None
        return control.value == value

    def _clamp_note(self, key: str, value) -> str:
        control = self.controls[key]
        lo, hi = getattr(control, "min", None), getattr(control, "max", None)
        return f"{key}={value!r} is outside {lo}..{hi}; using {control.value!r}"

    def _show(self, error: Exception | None = None, notes: list[str] = ()) -> None:
        parts = [f"<div class='qlearn-note' style='color:#555'>{html.escape(n)}</div>" for n in notes]
        self.error = None
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
            parts.append("<div class='qlearn-error' style='color:#b00020;white-space:pre-wrap'>"
                         f"&#9888; {html.escape(self.error)}</div>")
        self.message.value = "".join(parts)

    def _draw(self, values: dict) -> None:   # pragma: no cover - subclasses implement it
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        """The widget view plus the current figure as image/png: a notebook saved after running
        shows the figure where no widget can be drawn (GitHub, nbconvert, a closed kernel)."""
        parent = getattr(super(), "_repr_mimebundle_", None)
        data = parent(**kwargs) if parent is not None else self._widget_bundle_7()
        if isinstance(data, dict) and self.image.value:
            data["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return data

    if _IPYWIDGETS_7:
        def _ipython_display_(self, **kwargs):
            """ipywidgets 7.x shows a widget through `_ipython_display_` (IPython calls it before
            `_repr_mimebundle_`); publish the same bundle as 8.x does, PNG fallback included."""
            from IPython.display import display
            display(self._repr_mimebundle_(), raw=True)
            self._handle_displayed(**kwargs)

    def _widget_bundle_7(self) -> dict:
        """What ipywidgets 7.x's own `_ipython_display_` publishes: text/plain + the widget view."""
        plaintext = repr(self)
        return {"text/plain": plaintext[:110] + "…" if len(plaintext) > 110 else plaintext,
                _WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": self._model_id}}

    def png(self) -> bytes:
        """The figure as PNG bytes, fully re-rendered (what `image` shows, without the caching)."""
        return to_png(self.figure)


def _frontend_loop():
    """The kernel's event loop (a tornado IOLoop) when the change being handled came from the front end
    (the kernel is handling a `comm_msg`), else None. ipykernel 6-7: `get_parent("shell")`; 5.x (older
    Colab images): `_parent_header`."""
    try:
        from IPython import get_ipython
    except ImportError:            # pragma: no cover - IPython comes with ipywidgets
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or getattr(kernel, "io_loop", None) is None:
        return None
    try:
        parent = kernel.get_parent("shell")
    except TypeError:
        parent = kernel.get_parent()
    except AttributeError:
        parent = getattr(kernel, "_parent_header", None)
    header = (parent or {}).get("header") or {}
    return kernel.io_loop if header.get("msg_type") == "comm_msg" else None


def _ipympl_canvas(figure):
    """An ipympl canvas widget showing `figure` (pan / zoom / save in the browser), or None with a
    warning where ipympl is not installed. Optional: Colab has no working ipympl, so PNG stays
    the default; ipympl redraws the whole figure each time (slower than the PNG path)."""
    try:
        from ipympl.backend_nbagg import Canvas, FigureManager
    except ImportError:
        warnings.warn("canvas='ipympl' needs the ipympl package (pip install ipympl); showing PNG "
                      "images instead", stacklevel=4)
        return None
    canvas = Canvas(figure)
    FigureManager(canvas, 0)          # gives the canvas its toolbar
    canvas.header_visible = False
    return canvas


class SourceControls:
    """Where an explorer's tensor comes from, as controls plus a cached lookup.

    source=None: a "source" dropdown of synthetic kinds (seeded, n values shaped (n/1024, 1024));
    a tensor: that tensor; a dict name -> tensor: a dropdown of the names; an nn.Module: a "layer"
    box of its linear layer names (a name typed that does not exist gives a message).
    """

    def __init__(self, source=None, default="normal", n: int = 65536, seed: int = 0,
                 layer: str | None = None):
        self.source, self.n, self.seed = source, n, seed
        self._cache: OrderedDict = OrderedDict()
        self.controls: dict = {}
        if source is None:
            self.controls["source"] = widgets.Dropdown(
                options=list(sources.SYNTHETIC_KINDS), value=default, description="sample",
                style=_WIDE, layout=slider_layout("190px"))
        elif isinstance(source, dict):
            names = list(source)
            self.controls["source"] = widgets.Dropdown(options=names, value=names[0], description="tensor",
                                                       style=_WIDE, layout=slider_layout("240px"))
        elif isinstance(source, nn.Module):
            names = sources.linear_layer_names(source)
            self.controls["layer"] = widgets.Combobox(
                options=names, value=layer or (names[0] if names else ""), description="layer",
                ensure_option=False, continuous_update=False, style=_WIDE, layout=slider_layout("330px"))
        elif not isinstance(source, torch.Tensor):
            raise TypeError(f"source must be None, a tensor, a dict of tensors or an nn.Module; "
                            f"got {type(source).__name__}")

    def key(self, values: dict):
        return values.get("source", values.get("layer"))

    def tensor(self, values: dict) -> torch.Tensor:
        """The tensor for the current control values (the last 2 are cached)."""
        key = self.key(values)
        if key in self._cache:
            return self._cache[key]
        if self.source is None:
            shape = (self.n // 1024, 1024) if self.n % 1024 == 0 else None
            x = sources.synthetic(key, self.n, seed=self.seed, shape=shape)
        elif isinstance(self.source, dict):
            x = self.source[key]
        elif isinstance(self.source, nn.Module):
            x = sources.layer_weight(self.source, key)
        else:
            x = self.source
        self._cache[key] = x
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return x


class ResultCache(OrderedDict):
    """A small LRU dict: `get_or(key, make)` returns the cached value or stores make()."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value
