"""Every frame an explorer shows equals a full render of the same state, pixel for pixel.

Each explorer is driven through a sequence of control changes the way a learner drags its sliders (one
step at a time, forth and back) and flips its other controls. After every change, the frame it shows (the
PNG its fast renderer made, `qlearn.plots._fastrender`) is compared with a full fresh render: a new
explorer built with the same arguments, set to the same control values and rendered by matplotlib's plain
`FigureCanvasAgg` + `savefig` (renderer "agg"). No tolerance: the fast renderer replays matplotlib's own
glyph draws and composes the same artists in the same order, so any difference is a bug (the reported one:
lesson 10's mixed-precision explorer, bits/weight three steps right, lost the middle of its two-line title
to a band blanked between the panels and not drawn again).

The models are stand-ins (a seeded tensor, a fake two-layer model, seeded sensitivities) with the shapes
of the lessons' real ones; benchmarks/bench_widgets.py runs the same check on the real layers
(`frames_differing=`).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from qlearn import widgets
from qlearn.kernels import TimeSplit


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def full_render(make, values: dict) -> bytes:
    """A new explorer from `make()` set to `values`, rendered by plain Agg: the reference frame."""
    default = widgets.Explorer.renderer
    widgets.Explorer.renderer = "agg"
    try:
        fresh = make()
    finally:
        widgets.Explorer.renderer = default
    fresh.update(**values)
    assert fresh.error is None, fresh.error
    return bytes(fresh.image.value)


def drag(name: str, values) -> list:
    """One control moved through `values`, one step at a time (what continuous_update sends)."""
    return [(name, v) for v in values]


def _splits():
    """Time splits shaped like lesson 9's (mode x batch), invented numbers: only the drawing is tested."""
    def parts(s):
        return {("attention", "matmul"): 0.2 * s, ("mlp", "dequantize"): 0.3 * s, ("mlp", "matmul"): 0.4 * s,
                ("lm_head", "matmul"): 0.05 * s, ("other", "other"): 0.05 * s}
    splits = {(m, b): TimeSplit(m, b, 1, 0.01 * f * b ** 0.5, 0.011 * f * b ** 0.5, parts(0.01 * f * b ** 0.5))
              for m, f in (("bf16", 1.0), ("int4 fused", 0.6), ("nf4", 1.4)) for b in (1, 4, 16)}
    points = [dict(label=m, batch=b, measured_s=s.forward_s, memory_s=0.004, compute_s=0.0005 * b)
              for (m, b), s in splits.items()]
    return splits, points


def _mixed():
    from test_mixed import _FakeSensitivity

    from qlearn.widgets.mixed import mixed_precision_explorer
    sens = _FakeSensitivity()
    return lambda: mixed_precision_explorer(sens, budget=4.127, curve_points=8)


def _method():
    from qlearn.methods.layer import synthetic_layer
    from qlearn.widgets.methods import MethodExplorer
    w, x = synthetic_layer(64, 256, tokens=128)
    w2, x2 = synthetic_layer(96, 128, seed=1, tokens=128)
    return lambda: MethodExplorer({"a": w, "b": w2}, {"a": x, "b": x2}, method="gptq", blocksize=64)


def _outlier():
    from test_widgets import _Tok, _TwoLayers
    model = _TwoLayers()
    return lambda: widgets.outlier_explorer(model, _Tok(), layer="proj", prompt="some prompt text")


def _block_format():
    from qlearn.widgets.microscaling import block_format_explorer
    return block_format_explorer


def _finetune():
    """Lesson 12's explorer on stand-in runs (seeded numbers, no model); its runner refuses to train."""
    from qlearn.finetune.lora import Run
    rng = np.random.default_rng(0)
    checkpoints = tuple(range(0, 13, 2))
    runs = {}
    for i, key in enumerate([(8, "all-linear"), (4, "all-linear"), (8, "attention")]):
        heldout = tuple(3.5 * np.exp(-(0.3 - 0.07 * i) * s) for s in checkpoints)
        train = tuple(3.5 * np.exp(-(0.3 - 0.07 * i) * s + rng.normal(0, 0.15)) for s in range(12))
        answers = tuple(("42" if s >= 6 + 2 * i else "41", "54" if s >= 10 else "?") for s in checkpoints)
        runs[key] = Run(train, checkpoints, heldout, answers, 30.0, 2400, 600_000 >> i)

    def runner(rank, targets):
        raise AssertionError("no training here")
    return lambda: widgets.finetune_explorer(runner, runs=runs, prompts=("17 + 25 =", "9 x 6 ="), expected=("42", "54"))


CASES = {
    "histogram": (lambda: widgets.histogram_explorer(n=16384),
                  drag("bits", [3, 2, 3, 4, 5, 8, 4]) + drag("group", [1, 2, 3, 2, 40])
                  + drag("blocksize", [128, 256, 64]) + [("scheme", "zeropoint"), ("granularity", "row")]
                  + drag("group", [3, 4, 5]) + [("log", True), ("scheme", "nf4"), ("source", "laplace")]
                  + drag("blocksize", [32, 64])),
    "nf4": (widgets.nf4_explorer, drag("offset", [0.968, 0.9685, 0.969, 0.9685, 0.99])
            + drag("blocksize", [128, 256, 128]) + [("source", "laplace")]),
    "zeropoint": (lambda: widgets.zeropoint_explorer(bits=4), drag("bits", [3, 2, 3, 4, 5, 6, 5])
                  + drag("shift", [0.25, 0.5, 0.75, 0.5, -2.0]) + [("source", "normal")]),
    "double_quant": (lambda: widgets.double_quant_explorer(blocksize=64, model_size=70e9),
                     drag("blocksize", [128, 256, 128, 64, 32]) + drag("model_size", [65e9, 33e9, 13e9, 33e9])),
    "outlier": (_outlier(), drag("threshold", [5.0, 4.0, 3.0, 4.0, 50.0]) + [("layer", "out"), ("prompt", "another")]),
    "speed": (lambda: widgets.speed_explorer(*_splits(), mode="int4 fused", batch=1),
              drag("batch", [4, 16, 4, 1]) + [("mode", "bf16"), ("mode", "nf4")] + drag("batch", [4, 16])),
    # lesson 10's reported case first: bits/weight three steps (of 0.001) right of the lesson's budget
    "mixed": (_mixed(), drag("budget", [4.128, 4.129, 4.130, 4.131, 4.129, 4.5, 6.0]) + [("colour", "weighted error")]
              + drag("budget", [5.0, 4.2])),
    "method": (_method(), drag("row", [1, 2, 3, 2, 60]) + [("method", "rtn"), ("blocksize", 32), ("method", "awq")]
               + drag("row", [10, 11]) + [("layer", "b")] + drag("row", [5, 6])),
    "block_format": (_block_format(), drag("window", [1, 2, 3, 2]) + drag("row", [1, 2, 40])
                     + [("grid", "NVFP4"), ("grid", "NF4")] + drag("window", [10, 11])),
    "finetune": (_finetune(), drag("step", [10, 8, 6, 4, 6]) + [("rank", 4)] + drag("step", [8, 10, 12])
                 + [("rank", 8), ("targets", "attention"), ("targets", "all-linear")] + drag("step", [2, 0])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_frame_equals_a_full_render(name):
    make, moves = CASES[name]
    w = make()
    assert w.renderer == "fast" and w.error is None, w.error
    frames = [("start", None, bytes(w.image.value), w.values())]
    for key, value in moves:
        if key in w.controls and w.controls[key].value == value:
            continue
        w.controls[key].value = value                     # what a drag step or a click does
        assert w.error is None, f"{name}: {key}={value!r}: {w.error}"
        frames.append((key, value, bytes(w.image.value), w.values()))
    differing = []
    for key, value, png, values in frames:
        shown, full = pixels(png), pixels(full_render(make, values))
        if shown.shape != full.shape or not np.array_equal(shown, full):
            bad = shown.shape != full.shape or np.abs(shown.astype(int) - full).max(axis=-1) > 0
            differing.append(f"{key}={value!r}: {int(np.sum(bad))} pixels differ")
    assert not differing, f"{name}: {len(differing)} of {len(frames)} frames differ from a full render: {differing}"
    assert w._fast.frames >= len(frames) and w._fast.full_draws <= 3   # drawn in part, not rebuilt each time


def test_the_fast_renderer_draws_only_what_moved():
    """A slider step that moves the data but not the axes renders no axis again (only the title that
    changed); new limits render that axis again; a state seen before comes from the tile cache."""
    from matplotlib.axis import Axis
    from matplotlib.text import Text

    w = widgets.nf4_explorer()
    fast = w._fast
    w.update(offset=0.97)
    w.update(offset=0.975)                      # panel (a)'s points and title move; every axes stays put
    assert fast.full_draws == 1 and fast.redrawn and all(type(a) is Text for a in fast.redrawn)
    assert "offset 0.9750" in fast.redrawn[0].get_text()
    w.update(blocksize=256)                     # panel (b)'s and (c)'s limits change: their axes drawn again
    assert {a.axes for a in fast.redrawn if isinstance(a, Axis)} == set(w.figure.axes[1:])
    hits = fast.tile_hits
    w.update(blocksize=64)
    w.update(blocksize=256)                     # seen before: from the tile cache, nothing rendered
    assert fast.tile_hits > hits and not fast.redrawn and fast.full_draws == 1


def test_a_legend_over_the_data_is_drawn_each_frame_not_kept_stale():
    """An artist the full render draws after the data (a legend at matplotlib's default zorder, inside
    the axes) cannot stay in the background: the renderer draws it every frame, and the frames still match."""
    from matplotlib.legend import Legend

    from qlearn.plots._fastrender import FastRenderer

    w = widgets.zeropoint_explorer(n=4096)
    legend = w.figure.axes[1].get_legend()
    legend.set_zorder(Legend.zorder)            # back over the data
    w._fast = FastRenderer(w.figure)
    for bits in (3, 6):
        w.update(bits=bits)
        assert np.array_equal(pixels(w.image.value), pixels(full_render(lambda: _with_default_legend(), w.values())))


def _with_default_legend():
    from matplotlib.legend import Legend

    w = widgets.zeropoint_explorer(n=4096)
    w.figure.axes[1].get_legend().set_zorder(Legend.zorder)
    return w


def test_cached_text_replays_matplotlibs_own_pixels():
    """The text cache is exact: a figure of texts (rotated, coloured, two-line, unicode minus) renders
    to the same pixels as plain Agg, the first time (recorded) and the second (replayed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from qlearn.plots._base import to_png
    from qlearn.plots._textcache import _TEXTS, CachedTextCanvas

    fig = Figure(figsize=(3.0, 2.0), dpi=90)
    for i, (text, kw) in enumerate([("0.125", {}), ("levels (grey: unused)", {"color": "#c44e52", "fontsize": 11}),
                                    ("count", {"rotation": 90}), ("\u22120.06", {"rotation": 30}),
                                    ("two\nlines", {"alpha": 0.5})]):
        fig.text(0.1 + 0.17 * i, 0.3 + 0.1 * i, text, **kw)
    FigureCanvasAgg(fig)
    plain = pixels(to_png(fig))
    CachedTextCanvas(fig)
    size = len(_TEXTS)
    first, replayed = pixels(to_png(fig)), pixels(to_png(fig))
    assert len(_TEXTS) > size                   # recorded on the first render
    assert np.array_equal(first, plain) and np.array_equal(replayed, plain)
