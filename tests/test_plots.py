"""Plots: what each view shows, checked from its artists; the fast renderer against a full render."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import qlearn as ql
from qlearn import plots, sources
from qlearn.codeusage import entropy_bits
from qlearn.plots._fastrender import FastRenderer


@pytest.fixture(scope="module")
def x():
    return sources.synthetic("normal", 65536, seed=0, shape=(64, 1024))


def test_histogram_view_shows_the_groups_levels_and_all_values(x):
    r = ql.zeropoint_quantize(x, bits=3, blocksize=256)
    view = plots.QuantHistogramView().update(x, r, group=4)
    assert len(view.levels.get_segments()) == 8
    assert view.group_hist.get_data().values.sum() == 256
    assert view.orig_hist.get_data().values.sum() == x.numel()
    assert view.deq_hist.get_data().values.sum() == x.numel()
    assert "block 4 of 256" in view.axes[0].get_title()
    sqnr = ql.error_stats(x, r.dequantize())["sqnr_db"]
    assert f"SQNR {sqnr:.1f} dB" in view.axes[2].get_title()


def test_zeropoint_view_counts_used_levels():
    x = sources.shifted(sources.synthetic("normal", 20000, seed=1), 5.0)    # all positive
    results = {"absmax": ql.absmax_quantize(x, 4), "zeropoint": ql.zeropoint_quantize(x, 4)}
    sqnr = {k: list(range(2, 9)) for k in results}
    view = plots.ZeroPointView().update(x, results, sqnr, 4)
    # absmax spends half its levels on the empty negative side; zero-point's grid starts at 0
    # (integer zero point: 0.0 stays exact), so it leaves only the few levels below min(x) unused
    assert view.used["absmax"][1] == 15 and view.used["absmax"][0] <= 8
    assert view.used["zeropoint"][1] == 16 and view.used["zeropoint"][0] >= 13
    assert f"{view.used['absmax'][0]}/15 used" in view.axes[0].get_title()


def test_nf4_view_nf4_spreads_weights_more_evenly_than_int4(x):
    results = {"nf4": ql.quantize_4bit(x, "nf4", 64), "int4": ql.absmax_quantize(x, 4, blocksize=64),
               "fp4": ql.quantize_4bit(x, "fp4", 64)}
    view = plots.NF4View().update(x, results)
    ent = {k: entropy_bits(s) for k, (_, s) in view.shares.items()}
    assert ent["nf4"] > 3.8 and ent["nf4"] > ent["int4"] + 0.2 and ent["nf4"] > ent["fp4"]
    shown = view.lines["nf4"].get_ydata()
    assert np.allclose(shown, 100 * view.shares["nf4"][1])


def test_double_quant_view_saving_is_the_bits_per_param_difference():
    split = {(bs, dq): {"codes": 0.5, "absmax": (1 if dq else 4) / bs, "nested": 4 / (bs * 256) if dq else 0.0}
             for bs in (32, 64, 128) for dq in (False, True)}
    bpp = {dq: [ql.memory.bits_per_param("nf4+dq" if dq else "nf4", bs) for bs in (32, 64, 128)]
           for dq in (False, True)}
    view = plots.DoubleQuantView().update([32, 64, 128], split, bpp, 64, 7e9, [1e9, 7e9, 70e9])
    assert view.saving_bits == pytest.approx(4.5 - 4.126953125)
    assert "saves 0.373 bit/param" in view.axes[1].get_title()
    assert view.saving_gb == pytest.approx(0.373046875 * 7e9 / 8 / 1e9)


def test_outlier_view_share_matches_int8_vectorwise():
    torch.manual_seed(0)
    inputs = torch.randn(12, 300)
    inputs[:, [5, 17]] *= 30
    cols = ql.int8_vectorwise(inputs, threshold=6.0).outlier_cols
    view = plots.OutlierView().update(inputs, cols, 6.0, layer="toy")
    assert view.share == pytest.approx(len(cols) / 300) and {5, 17} <= set(cols.tolist())
    x, y = view.marker.get_data()
    assert x[0] == 6.0 and y[0] == pytest.approx(100 * view.share)


def test_block_zoom_tells_an_already_quantized_tensor():
    w = sources.synthetic("normal", 32 * 64, seed=0)
    q41 = ql.zeropoint_quantize(w, 4, blocksize=32, zero_point_domain="float").dequantize()
    artists = plots.block_zoom(q41, block=3, result=ql.zeropoint_quantize(q41, 4, blocksize=32,
                                                                         zero_point_domain="float"))
    assert len(artists["levels"].get_segments()) == 16
    assert "100.0% of 64 blocks hold <= 16 values" in artists["distinct"].axes.get_title()
    with pytest.raises(ValueError, match="block must be in 0..63"):
        plots.block_zoom(w, block=64)


def test_layer_error_map_heatmap_and_fallback():
    sqnr = {f"model.layers.{i}.{k}": 20.0 + i for i in range(3) for k in ("self_attn.q_proj", "mlp.down_proj")}
    art = plots.layer_error_map(sqnr)
    assert art["image"].get_array().shape == (3, 2)
    assert "worst: model.layers.0.self_attn.q_proj" in art["image"].axes.get_title()
    art = plots.layer_error_map({"fc1": 10.0, "fc2": 12.0})
    assert len(art["bars"]) == 2


def test_report_figures():
    import pandas as pd

    df = pd.DataFrame({"linear_weight_bytes": [200e6, 60e6], "quant_state_bytes": [0, 4e6],
                       "other_bytes": [50e6, 50e6], "reported_bytes": [250e6, 110e6], "true_bytes": [250e6, 114e6],
                       "perplexity": [10.0, 11.2], "answer": ["Paris is the capital.", "Lyon"]}, index=["bf16", "nf4"])
    ax = plots.memory_figure(df).axes[0]
    assert [t.get_text() for t in ax.texts] == ["250.0", "114.0"]              # true MB on top of each bar
    ax = plots.perplexity_figure(df, 512, 128).axes[0]
    assert "512 tokens" in ax.get_title() and ax.get_ylim()[1] == pytest.approx(11.2 * 1.2)
    texts = plots.answers_figure(df, "What is the capital of France?").texts
    assert texts[0].get_text().startswith("Q: What is the capital") and texts[-1].get_color() == "#C44E52"
    assert plots.to_png(plots.perplexity_figure(df.assign(perplexity=float("nan"))))[:4] == b"\x89PNG"


def test_generation_view_bars():
    rows = [{"mode": "bf16", "footprint_mb": 269.0, "tokens_per_s": 20.0},
            {"mode": "nf4", "footprint_mb": 109.8, "tokens_per_s": None}]
    view = plots.GenerationView().update(rows)
    heights = [p.get_width() for p in view.axes[0].patches]
    assert heights == [269.0, 109.8]
    view.update(rows[:1])
    assert len(view.axes[0].patches) == 1


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_fast_renderer_matches_a_full_render(x):
    view = plots.QuantHistogramView()
    renderer = FastRenderer(view.fig)
    for bits in (3, 5):   # the second update changes the error panel's limits: one axes redrawn
        view.update(x, ql.absmax_quantize(x, bits, blocksize=64))
        fast, full = _pixels(renderer.png()), _pixels(plots.to_png(view.fig))
        assert fast.shape == full.shape
        assert (np.abs(fast - full).sum(axis=-1) > 60).mean() < 0.002    # anti-aliasing only
    assert renderer.full_draws == 1 and renderer.axes_draws >= 1
    before = renderer.axes_draws
    renderer.png()
    assert renderer.axes_draws == before                               # nothing changed, nothing redrawn
    artists = [a for ax in view.fig.axes for a in ax.get_children()]
    assert not any(a.get_animated() for a in artists)                  # the flags it set are given back


def test_fast_renderer_keeps_a_neighbours_label_that_reaches_into_a_redrawn_cell():
    # the zero-point view's "SQNR (dB)" label sits left of halfway to the middle panel: blanking the
    # middle panel for a redraw must not erase it (it did, seen in the browser test's screenshot)
    w = ql.widgets.zeropoint_explorer()
    for bits in (2, 5, 3):
        w.update(bits=bits)
        fast, full = _pixels(w._render_png()), _pixels(plots.to_png(w.figure))
        assert int((np.abs(fast - full).sum(axis=-1) > 60).sum()) < 100   # measured: 28 (anti-aliasing); 500+ erased


def test_plots_do_not_use_pyplot():
    code = ("import qlearn.plots, qlearn.widgets, sys; "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _ink_box(ink: np.ndarray) -> np.ndarray:
    return np.array([np.flatnonzero(ink.any(axis=1))[[0, -1]], np.flatnonzero(ink.any(axis=0))[[0, -1]]])


@pytest.mark.parametrize("text, kw", [("0.125", {}), ("levels (grey: unused)", {"color": "#c44e52", "fontsize": 11}),
                                      ("count", {"rotation": 90}), ("\u22120.06", {"rotation": 30})])
def test_cached_text_canvas_stamps_text_as_plain_agg_draws_it(text, kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import IdentityTransform

    from qlearn.plots._fastrender import CachedTextCanvas

    fig = Figure(figsize=(3.0, 2.0), dpi=90)
    fig.text(60, 50, text, transform=IdentityTransform(), ha="left", va="baseline", **kw)
    FigureCanvasAgg(fig)
    plain = _pixels(plots.to_png(fig))
    CachedTextCanvas(fig)
    first, cached = _pixels(plots.to_png(fig)), _pixels(plots.to_png(fig))   # the second from the cache
    assert np.array_equal(first, cached)
    if "rotation" not in kw:       # anchored on a whole pixel: plain Agg's very pixels
        assert np.abs(cached - plain).max() <= 6
        return
    # rotated text lands off the pixel grid and is snapped: same place and ink, up to anti-aliasing
    ink, ink_plain = 765 - cached.sum(axis=-1), 765 - plain.sum(axis=-1)
    assert np.abs(_ink_box(ink) - _ink_box(ink_plain)).max() <= 1
    assert abs(ink.sum() / ink_plain.sum() - 1) < 0.01
    assert np.corrcoef(ink.ravel(), ink_plain.ravel())[0, 1] > 0.8      # measured ~0.9 (upside down: ~0.2)


def test_cached_text_canvas_looks_like_plain_agg(x):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    view = plots.QuantHistogramView().update(x, ql.quantize_4bit(x, "nf4", 64))
    cached = _pixels(plots.to_png(view.fig))
    cached_again = _pixels(plots.to_png(view.fig))                    # second time: from the cache
    FigureCanvasAgg(view.fig)
    plain = _pixels(plots.to_png(view.fig))
    assert np.array_equal(cached, cached_again)
    # text is snapped to whole pixels: every pixel matches plain Agg within one pixel's shift
    best = np.full(cached.shape[:2], 10 ** 6)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(plain, (dy, dx), axis=(0, 1))
            best = np.minimum(best, np.abs(cached - shifted).sum(axis=-1))
    assert (best > 120).mean() < 0.01     # (raw pixel-by-pixel: ~3% of pixels, all in text)
