"""Explorers driven without a display: set controls, check what the figure shows, bad input -> message.

Every explorer's default figure is also written to tests/_artifacts/<name>.png for a person to
look at. Tests marked slow use the embedded SmolLM2 (bf16, loaded once for this module).
Tests marked ipywidgets7 (every explorer built, each control moved, messages, the display path)
also run under ipywidgets 7.7.1, Colab's, from tests/test_ipywidgets7.py: they use only what both
ipywidgets 7.7 and 8.x offer. The others check math and plots, the same under either.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import qlearn as ql
from qlearn import sources, widgets
from qlearn.models import Generation

ARTIFACTS = Path(__file__).parent / "_artifacts"
ipywidgets7 = pytest.mark.ipywidgets7   # also run under ipywidgets 7.7.1 (tests/test_ipywidgets7.py)


def _save(w, name):
    ARTIFACTS.mkdir(exist_ok=True)
    data = w.png()
    (ARTIFACTS / f"{name}.png").write_bytes(data)
    return data


def _assert_explorer(w, name):
    assert w.error is None, w.error
    assert set(w.controls) and w.figure is w.view.fig
    assert w.image.value[:4] == b"\x89PNG"
    assert "qlearn-explorer" in w._dom_classes and f"qlearn-{name.replace('_', '-')}" in w._dom_classes
    assert "qlearn-message" in w.message._dom_classes and "qlearn-figure" in w.image._dom_classes
    for key, control in w.controls.items():
        assert f"qlearn-control-{key.replace('_', '-')}" in control._dom_classes


# --- histogram explorer ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hist():
    return widgets.histogram_explorer()


@ipywidgets7
def test_histogram_explorer_defaults(hist):
    _assert_explorer(hist, "histogram_explorer")
    _save(hist, "histogram_explorer")
    assert hist.values()["scheme"] == "absmax" and hist.result.blocksize == 64


@pytest.mark.parametrize("scheme, bits, expected", [
    ("zeropoint", 2, 4), ("zeropoint", 3, 8), ("zeropoint", 8, 256),
    ("absmax", 4, 15), ("absmax", 8, 255), ("nf4", 4, 16), ("fp4", 4, 15)])
def test_histogram_explorer_levels_shown_per_block(hist, scheme, bits, expected):
    hist.update(scheme=scheme, bits=bits, granularity="block", blocksize=4096, group=3)
    assert hist.error is None
    assert len(hist.view.levels.get_segments()) == expected            # the level lines drawn
    assert "block 3 of 16" in hist.figure.axes[0].get_title()
    assert f"{expected} levels" in hist.figure.axes[0].get_title()
    if scheme == "zeropoint":   # per block, the dequantized values are 2**bits levels at most, and a
        deq = hist.result.dequantize().reshape(-1, 4096)   # block of 4096 uses all of them up to 3 bits
        distinct = [len(torch.unique(deq[b])) for b in (0, 3, 15)]
        assert all(d == 2 ** bits for d in distinct) if bits <= 3 else max(distinct) <= 2 ** bits


@pytest.fixture
def ipython():
    """An IPython shell (no kernel) to display into; what it changes globally is put back after."""
    import builtins
    import sys

    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if InteractiveShell.initialized():
        yield InteractiveShell.instance()
        return
    main, added = sys.modules["__main__"], {"display", "__IPYTHON__"} - set(vars(builtins))
    config = Config()
    config.HistoryManager.enabled = False
    try:
        yield InteractiveShell.instance(config=config)
    finally:
        InteractiveShell.clear_instance()
        sys.modules["__main__"] = main
        for name in added:
            vars(builtins).pop(name, None)


@ipywidgets7
def test_explorer_display_carries_a_png_fallback(hist, ipython):
    import base64

    from IPython.display import display
    from IPython.utils.capture import capture_output

    displayed = []
    if hasattr(hist, "on_displayed"):                      # ipywidgets 7.x only (8.0 dropped it)
        hist.on_displayed(lambda widget, **kwargs: displayed.append(widget))
    with capture_output() as shown:                        # the path a notebook cell takes
        display(hist)
    assert len(shown.outputs) == 1 and len(displayed) == hasattr(hist, "on_displayed")
    for bundle in (shown.outputs[0].data, hist._repr_mimebundle_()):
        assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == hist.model_id
        assert base64.b64decode(bundle["image/png"]) == hist.image.value
        assert bundle["text/plain"].startswith("HistogramExplorer(")


def test_histogram_explorer_dict_of_tensors():
    named = {"normal": sources.synthetic("normal", 4096, shape=(64, 64)),
             "laplace": sources.synthetic("laplace", 8192, shape=(64, 128))}
    w = widgets.histogram_explorer(named)
    assert w.controls["source"].options == ("normal", "laplace") and w.result.shape == (64, 64)
    w.update(source="laplace")
    assert w.error is None and w.result.shape == (64, 128)


@ipywidgets7
def test_histogram_explorer_controls_drive_the_figure(hist):
    hist.update(scheme="zeropoint", bits=4, granularity="tensor")
    png = hist.image.value
    hist.controls["bits"].value = 3                        # what a user's slider move does
    assert hist.image.value != png and len(hist.view.levels.get_segments()) == 8
    assert hist.controls["blocksize"].disabled             # per-tensor scales: no blocksize
    hist.update(granularity="row", group=10)
    assert "row 10 of 64" in hist.figure.axes[0].get_title()
    hist.update(scheme="nf4")
    assert hist.controls["bits"].disabled and hist.controls["granularity"].disabled
    hist.update(scheme="absmax", granularity="block", blocksize=64, group=10**6)   # clamped to the last block
    assert hist.controls["group"].value == hist.controls["group"].max == 1023


def test_a_redraw_runs_on_one_thread_and_gives_the_callers_count_back(hist, monkeypatch):
    from qlearn._threads import threads

    seen = []
    draw = type(hist)._draw
    monkeypatch.setattr(hist, "_draw", lambda values: (seen.append(torch.get_num_threads()), draw(hist, values)))
    with threads(2):
        hist.update(bits=5)
        assert seen == [1] and torch.get_num_threads() == 2 and hist.error is None


@ipywidgets7
def test_histogram_explorer_bad_input_is_a_message(hist):
    hist.update(bits=99)
    assert hist.error is None and hist.controls["bits"].value == 8
    assert "outside 2..8" in hist.message.value
    hist.update(scheme="int3")
    assert "scheme='int3' is not offered" in hist.error and "qlearn-error" in hist.message.value
    hist.update(colour="red")
    assert "unknown control(s) 'colour'" in hist.error
    hist.update(bits=4)
    assert hist.error is None and hist.message.value == ""


@ipywidgets7
def test_histogram_explorer_nan_and_1d_messages():
    x = torch.randn(64, 64)
    x[3, 3] = float("nan")
    w = widgets.histogram_explorer(x)
    assert "NaN" in w.error and "NaN" in w.message.value
    w1 = widgets.histogram_explorer(torch.randn(4096), granularity="row")
    assert "per-row scales need a 2-D weight" in w1.error


@ipywidgets7
def test_histogram_explorer_model_layer_names():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    w = widgets.histogram_explorer(model, layer="2")
    assert w.error is None and w.result.shape == (8, 32)
    w.controls["layer"].value = "1"                        # typed into the box: the ReLU
    assert "layer '1' is not a linear layer" in w.error
    w.controls["layer"].value = "3"
    assert "layer '3' does not exist in this model; linear layers are: 0, 2" in w.error
    w.update(layer="0")
    assert w.error is None and w.result.shape == (32, 64)


# --- NF4, zero-point, double quant -----------------------------------------------------------------

def test_nf4_explorer_occupancy_nearly_uniform_and_more_than_int4():
    w = widgets.nf4_explorer()
    _assert_explorer(w, "nf4_explorer")
    _save(w, "nf4_explorer")
    share = w.shares["nf4"][1]                               # blocksize 64, QLoRA's setting
    assert w.entropy["nf4"] > 3.85 and share.max() < 1.6 / 16 and share.min() > 0.2 / 16   # near 1/16 each
    for blocksize in (32, 64, 256, 4096):   # bigger blocks: the block max sits further out in the
        w.update(blocksize=blocksize)       # tail, values bunch up in the middle; still NF4 > INT4
        share = w.shares["nf4"][1]
        assert w.entropy["nf4"] > w.entropy["int4"] + 0.15 and share.max() < w.shares["int4"][1].max()
    w.update(offset=0.99)
    assert "offset 0.9900" in w.figure.axes[0].get_title()
    w.update(offset=2.0)                                    # clamped to the slider's max
    assert w.error is None and w.controls["offset"].value == 0.995


def test_zeropoint_explorer_levels_used_and_sqnr():
    w = widgets.zeropoint_explorer()
    _assert_explorer(w, "zeropoint_explorer")
    _save(w, "zeropoint_explorer")
    assert w.used["zeropoint"][0] > w.used["absmax"][0]                  # skewed: absmax wastes levels
    assert all(z > a for z, a in zip(w.sqnr["zeropoint"], w.sqnr["absmax"], strict=True))
    for bits in (2, 5, 8):
        w.update(bits=bits)
        assert w.used["zeropoint"][1] == 2 ** bits and w.used["absmax"][1] == 2 ** bits - 1
    w.update(shift=-2.5, bits=4)
    assert w.error is None and f"{w.used['absmax'][0]}/15 used" in w.figure.axes[0].get_title()


def test_finetune_explorer_step_is_live_and_moves_only_the_marker():
    from matplotlib.lines import Line2D
    from test_frames import _finetune

    from qlearn.plots._base import LEGEND_ZORDER

    w = _finetune()()
    _assert_explorer(w, "finetune_explorer")
    ax = w.figure.axes[0]
    assert w.controls["step"].continuous_update
    limits, lines = (ax.get_xlim(), ax.get_ylim()), [a for a in ax.get_children() if isinstance(a, Line2D)]
    legend = ax.get_legend()
    for step in (10, 6, 2, 0):
        w.controls["step"].value = step                    # a drag: the marker moves, curves and limits stay
        assert w.error is None and w.view.marker.get_xdata()[0] == step
        assert (ax.get_xlim(), ax.get_ylim()) == limits and ax.get_legend() is legend
        assert [a for a in ax.get_children() if isinstance(a, Line2D)] == lines
    w.update(rank=4)                                        # another run: drawn full, the first one pale
    held = {label: line for label, (_, _, line) in w.view.curves.items()}
    colors = {label: line.get_color() for label, line in held.items()}
    assert held["r=4, all-linear"].get_alpha() == 1.0 and held["r=8, all-linear"].get_alpha() < 1
    w.update(rank=8)
    after = {label: line.get_color() for label, (_, _, line) in w.view.curves.items()}
    assert after == colors                                  # each run keeps its colour, whichever is shown
    # the legend: right of the axes (over no curve), one entry a run, under the data (a still background)
    renderer = w.figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1
    assert len(legend.get_texts()) == 3 and legend.get_zorder() == LEGEND_ZORDER


def test_double_quant_explorer_shows_the_bits_per_param_difference():
    w = widgets.double_quant_explorer()
    _assert_explorer(w, "double_quant_explorer")
    _save(w, "double_quant_explorer")
    for bs in (32, 64, 256, 4096):
        w.update(blocksize=bs, model_size=70e9)
        diff = (32 - 8 - 32 / 256) / bs   # float32 absmax a block -> 8-bit + one float32 per 256 blocks
        assert w.saving_bits == pytest.approx(diff)
        assert f"saves {diff:.3f} bit/param" in w.figure.axes[1].get_title()
        assert f"{diff * 70e9 / 8 / 1e9:.2f} GB" in w.figure.axes[2].get_title()
    w.update(blocksize=64, model_size=7e9)
    assert w.saving_gb == pytest.approx(0.3264, abs=1e-4)                # QLoRA: ~0.33 GB at 7B
    w.update(blocksize=48)
    assert "blocksize=48 is not offered" in w.error


# --- outliers (fake model) -------------------------------------------------------------------------

class _Embedder(nn.Module):
    """A 'model' whose layer `proj` receives fixed inputs with a few huge columns."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(200, 4)
        gen = torch.Generator().manual_seed(0)
        self.table = torch.randn(64, 200, generator=gen)
        self.table[:, :6] *= torch.tensor([2.0, 4.0, 8.0, 16.0, 32.0, 64.0])

    def forward(self, input_ids):
        return self.proj(self.table[input_ids])


class _Tok:
    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [ord(c) % 64 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def test_outlier_explorer_share_falls_as_the_threshold_rises():
    w = widgets.outlier_explorer(_Embedder(), _Tok(), layer="proj", prompt="some prompt text")
    _assert_explorer(w, "outlier_explorer")
    shares = [w.update(threshold=t).share for t in (0.5, 1, 2, 4, 8, 16, 32, 64, 100)]
    assert all(a >= b for a, b in zip(shares, shares[1:], strict=False)) and shares[0] > shares[-1]
    w.update(threshold=6.0)
    expected = int((w.inputs.abs() >= 6.0).any(dim=0).sum()) / 200   # columns holding any |x| >= 6
    assert w.share == expected and f"({expected:.1%})" in w.figure.axes[0].get_title()
    w.update(threshold=1e6)
    assert w.controls["threshold"].value == 100 and w.error is None
    w.update(layer="nope")
    assert "layer 'nope' does not exist" in w.error
    w.update(layer="proj", prompt="")
    assert "prompt must be a non-empty string" in w.error


# --- generation (fake loader) ----------------------------------------------------------------------

class _FakeModel:
    def __init__(self, mode):
        self.mode = mode


class _FakeFootprint:
    def __init__(self, reported, state):
        self.reported_bytes, self.quant_state_bytes = reported, state


def _fake_loader(model_id, mode):
    if mode == "fp4":
        raise RuntimeError("fp4 needs bitsandbytes")
    return _FakeModel(mode), _Tok()


@ipywidgets7
def test_generation_explorer_with_a_fake_loader():
    calls = []

    def timer(model, tok, prompt, max_new_tokens):
        calls.append((model.mode, prompt, max_new_tokens))
        return Generation(f"{model.mode} says hi", new_tokens=3, seconds=0.5)

    sizes = {"bf16": 269e6, "int8": 163e6, "nf4": 110e6}
    w = widgets.generation_explorer("Hello?", modes=("bf16", "nf4", "fp4"), loader=_fake_loader,
                                    timer=timer,
                                    footprint=lambda m: _FakeFootprint(sizes[m.mode], 6.6e6))
    _assert_explorer(w, "generation_explorer")
    assert calls == [] and w.rows == []                    # nothing runs before the button
    png = bytes(w.image.value)
    w.controls["prompt"].value = "Changed?"
    w.controls["max_new_tokens"].value = 12
    w.controls["mode_int8"].value = True
    w.controls["mode_int8"].value = False
    assert calls == [] and "press <b>Generate</b>" in w.status.value and bytes(w.image.value) == png
    w.controls["generate"].click()
    assert [c[0] for c in calls] == ["bf16", "nf4"] and calls[0][1:] == ("Changed?", 12)
    assert bytes(w.image.value) != png and w.error is None
    assert [r["mode"] for r in w.rows] == ["bf16", "nf4", "fp4"]
    assert w.rows[2]["answer"].startswith("error: RuntimeError: fp4 needs bitsandbytes")
    assert "nf4 says hi" in w.table.value and w.progress.value == w.progress.max == 3
    assert w.rows[0]["tokens_per_s"] == 6.0 and w.rows[0]["footprint_mb"] == 269.0   # 3 tokens in 0.5 s
    assert "mode_nf4_dq" in w.controls and not w.controls["mode_nf4_dq"].value       # "nf4" is plain NF4
    assert [p.get_width() for p in w.figure.axes[0].patches] == [269.0, 110.0, 0.0]
    w.update(mode_bf16=False, mode_nf4=False, mode_fp4=False)
    assert "no mode selected" in w.error


# --- every control, moved the way a user moves it -------------------------------------------------

class _TwoLayers(_Embedder):
    """_Embedder with a second linear layer, so the layer box has two names to switch between."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 3)

    def forward(self, input_ids):
        return self.out(super().forward(input_ids))


# explorer -> (factory, a new value for each control, in an order where every move shows: e.g. the
# blocksize before "per row" scales, which ignore it)
FIGURE_EXPLORERS = {
    "histogram": (lambda: widgets.histogram_explorer(n=16384), dict(
        source="laplace", scheme="zeropoint", bits=3, blocksize=256, group=5, log=True, granularity="row")),
    "histogram_layers": (lambda: widgets.histogram_explorer(_TwoLayers(), layer="proj"), dict(
        scheme="zeropoint", bits=3, blocksize=32, group=5, log=True, granularity="row", layer="out")),
    "nf4": (lambda: widgets.nf4_explorer(n=16384), dict(source="laplace", blocksize=256, offset=0.99)),
    "zeropoint": (lambda: widgets.zeropoint_explorer(n=16384), dict(source="normal", shift=1.5, bits=3)),
    "double_quant": (widgets.double_quant_explorer, dict(blocksize=256, model_size=70e9)),
    "outlier": (lambda: widgets.outlier_explorer(_TwoLayers(), _Tok(), layer="proj", prompt="some prompt text"),
                dict(threshold=2.0, prompt="another prompt", layer="out")),
}


@ipywidgets7
@pytest.mark.parametrize("make, moves", FIGURE_EXPLORERS.values(), ids=FIGURE_EXPLORERS.keys())
def test_every_control_redraws_the_figure(make, moves):
    w = make()
    png = bytes(w.image.value)
    assert w.error is None and png[:4] == b"\x89PNG" and set(moves) == set(w.controls)
    for key, value in moves.items():
        control = w.controls[key]
        assert not control.disabled and control.value != value, key
        control.value = value                               # what a click, a drag or typing does
        assert w.error is None and w.message.value == "", f"{key}={value!r}: {w.message.value}"
        assert control.value == value and bytes(w.image.value) != png, f"{key}={value!r} left the figure as it was"
        png = bytes(w.image.value)


# --- the real embedded model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol(embedded_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.bfloat16)
    return model.eval(), AutoTokenizer.from_pretrained(embedded_path)


@pytest.mark.slow
def test_outlier_explorer_on_the_embedded_model(smol):
    model, tok = smol
    w = widgets.outlier_explorer(model, tok)
    _assert_explorer(w, "outlier_explorer")
    _save(w, "outlier_explorer")
    assert w.inputs.shape[1] == 576
    shares = [w.update(threshold=t).share for t in (0.2, 1.0, 3.0, 6.0, 20.0)]
    assert all(a >= b for a, b in zip(shares, shares[1:], strict=False)) and shares[0] > shares[-1]
    w.update(layer="model.layers.29.mlp.down_proj", threshold=6.0)
    assert w.inputs.shape[1] == 1536 and w.share > 0.01      # the last MLP's inputs: many big columns
    w.update(layer="model.layers.99.mlp.down_proj")
    assert "does not exist" in w.error and "(211 in all)" in w.error


@pytest.mark.slow
def test_histogram_explorer_on_a_real_layer_and_block_zoom(smol):
    model, _ = smol
    w = widgets.histogram_explorer(model, layer="model.layers.3.mlp.down_proj", scheme="nf4")
    assert w.error is None and w.result.shape == (576, 1536)
    _save(w, "histogram_explorer_real_layer")
    weight = sources.layer_weight(model, "model.layers.3.mlp.down_proj")
    fit = ql.zeropoint_quantize(weight, 4, blocksize=32, zero_point_domain="float")
    fig, axes = ql.plots.new_figure(2)
    artists = ql.plots.block_zoom(weight, block=5, result=fit, axes=axes)
    assert "stored as 4-bit before" in artists["distinct"].axes.get_title()   # Q4_1 in the GGUF
    (ARTIFACTS / "block_zoom.png").write_bytes(ql.plots.to_png(fig))
    fig, axes = ql.plots.new_figure(1, figsize=(6.0, 6.0))
    fig.subplots_adjust(left=0.14, bottom=0.14, top=0.9, right=0.9)
    art = ql.plots.model_error_map(model, ax=axes[0], include=r"layers\.(\d|1[0-1])\.")   # 12 of 30 blocks
    assert art["image"].get_array().shape == (12, 7) and len(art["sqnr"]) == 84
    assert all(15 < v < 30 for v in art["sqnr"].values())                         # NF4: ~20 dB
    (ARTIFACTS / "layer_error_map.png").write_bytes(ql.plots.to_png(fig))


@pytest.mark.slow
def test_generation_explorer_real_run():
    w = widgets.generation_explorer("What is the capital of France?", modes=("bf16", "nf4"), max_new_tokens=8)
    w.update()
    assert w.error is None, w.error
    _save(w, "generation_explorer")
    bf16, nf4 = w.rows
    assert "Paris" in bf16["answer"] and not nf4["answer"].startswith("error")
    assert nf4["footprint_mb"] < bf16["footprint_mb"] and nf4["quant_state_mb"] > 0


@pytest.mark.parametrize("make", [widgets.histogram_explorer, widgets.nf4_explorer, widgets.zeropoint_explorer])
@pytest.mark.parametrize("x", [torch.zeros(64, 64), torch.ones(32, 32), torch.randn(1000, dtype=torch.bfloat16),
                               torch.randn(3)], ids=["zeros", "constant", "bf16-1d", "three"])
def test_weight_explorers_draw_odd_tensors(make, x):
    w = make(x)
    assert w.error is None, w.error
    assert w.image.value[:4] == b"\x89PNG"


def test_weight_explorers_reject_integer_tensors_with_a_message():
    w = widgets.histogram_explorer(torch.arange(100))
    assert "dtype torch.int64" in w.error and "x.float()" in w.error


@ipywidgets7
@pytest.mark.parametrize("renderer", ["agg", "fast"])
def test_renderer_switch_shows_the_full_render(renderer, monkeypatch):
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    def pixels(png):
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    monkeypatch.setattr(widgets.Explorer, "renderer", renderer)
    w = widgets.zeropoint_explorer(n=16384)
    assert (type(w.figure.canvas) is FigureCanvasAgg) == (renderer == "agg")   # agg: matplotlib's own canvas
    for bits in (5, 2):
        png = bytes(w.image.value)
        w.update(bits=bits)
        assert w.error is None and bytes(w.image.value) != png
        shown, full = pixels(w.image.value), pixels(w.png())
        assert (np.abs(shown - full).sum(axis=-1) > 60).mean() < 0.002      # anti-aliasing only
    w.renderer = "agg" if renderer == "fast" else "fast"                    # switched on the instance
    w.update(bits=4)
    assert w.error is None and (np.abs(pixels(w.image.value) - pixels(w.png())).sum(axis=-1) > 60).mean() < 0.002
    w.renderer = "svg"
    w.update(bits=3)
    assert "renderer must be 'agg' or 'fast'" in w.error


@ipywidgets7
def test_canvas_option_png_default_ipympl_optional():
    with pytest.raises(ValueError, match="canvas must be 'png'"):
        widgets.zeropoint_explorer(canvas="svg")
    try:
        import ipympl  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="needs the ipympl package"):
            w = widgets.zeropoint_explorer(canvas="ipympl")
        assert w.canvas is None and w.image in w.children and w.image.value[:4] == b"\x89PNG"
        return
    w = widgets.zeropoint_explorer(canvas="ipympl")        # where ipympl is installed
    assert w.canvas in w.children and w.image not in w.children
    assert "qlearn-figure" in w.canvas._dom_classes and w.figure.canvas is w.canvas
    w.update(bits=3)
    assert w.error is None and w.used["zeropoint"][1] == 8


# --- live sliders: continuous_update, and front-end changes coalesced in a real kernel ---------------

def _all_explorers():
    """One of every explorer (stand-in inputs, nothing loaded)."""
    from test_frames import CASES

    made = [make() for make, _ in CASES.values()]
    return made + [widgets.generation_explorer(modes=("bf16",), loader=_fake_loader)]


@ipywidgets7
def test_every_explorer_slider_sends_while_it_is_dragged():
    import ipywidgets

    sliders = (ipywidgets.IntSlider, ipywidgets.FloatSlider, ipywidgets.FloatLogSlider, ipywidgets.SelectionSlider)
    seen = 0
    for w in _all_explorers():
        for key, control in w.controls.items():
            if isinstance(control, sliders):
                assert control.continuous_update, f"{w.name}: {key} updates only when released"
                seen += 1
    assert seen >= 15


KERNEL_SETUP = """
import json, time, ipywidgets, qlearn as ql
w = ql.widgets.zeropoint_explorer(n=4096)
log = []
_draw = w._draw
def _recorded(values):
    log.append(("draw", values["bits"])); time.sleep(0.05); _draw(values)   # a slow frame: changes pile up behind it
w._draw = _recorded
w.controls["bits"].observe(lambda change: log.append(("change", change["new"])), names="value")
print(json.dumps([ipywidgets.__version__, w.controls["bits"].model_id]))
"""


@ipywidgets7
def test_front_end_changes_are_coalesced_in_a_real_kernel():
    """A real kernel (jupyter_client, the venv's ipykernel) gets 20 slider updates as comm messages, sent
    back to back the way a front end sends them while a slider is dragged: it draws at once for the
    first, then once more with the last value, not 20 frames behind the hand."""
    import json
    import time

    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")

    def run(code):
        out = []
        reply = kc.execute_interactive(code, timeout=180, output_hook=out.append)
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream").strip()

    try:
        version, comm_id = json.loads(run(KERNEL_SETUP).splitlines()[-1])
        run("log.clear()")
        values = [2, 3, 5, 6, 7, 8, 3, 2, 5, 6, 7, 8, 2, 3, 5, 6, 7, 8, 2, 6]
        for v in values:
            kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
                "method": "update", "state": {"value": v}, "buffer_paths": []}}))
        deadline, state = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            state = json.loads(run("print(json.dumps([log, w.controls['bits'].value, w.error, w._scheduled, "
                                   "w.used['zeropoint'][1]]))"))
            if not state[3] and [e for e in state[0] if e[0] == "draw"][-1:] == [["draw", 6]]:
                break
            time.sleep(0.2)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    import ipywidgets
    assert version == ipywidgets.__version__                       # the kernel ran this test's ipywidgets
    log, value, error, scheduled, levels = state
    changes, draws = [e for e in log if e[0] == "change"], [e[1] for e in log if e[0] == "draw"]
    assert [c[1] for c in changes] == values and value == 6 and error is None and not scheduled
    assert draws[-1] == 6 and levels == 2 ** 6                       # the last value is what is shown
    assert len(draws) <= 3, f"{len(draws)} frames for {len(values)} changes: {draws}"
