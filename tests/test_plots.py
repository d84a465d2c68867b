"""Plots: what each view shows, checked from its artists; the fast renderer against a full render."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import qlearn as ql
from qlearn import codebooks, plots, sources
from qlearn.plots._base import FastRenderer


@pytest.fixture(scope="module")
def x():
    return sources.synthetic("normal", 65536, seed=0, shape=(64, 1024))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_of_each_scheme(x, bits):
    assert plots.levels_of(ql.absmax_quantize(x, bits)).numel() == 2 ** bits - 1
    assert plots.levels_of(ql.zeropoint_quantize(x, bits, blocksize=64), 5).numel() == 2 ** bits
    r = ql.absmax_quantize(x, bits, axis=0)
    assert torch.allclose(plots.levels_of(r, 3).abs().max(), x[3].abs().max())


def test_levels_of_4bit_and_groups(x):
    nf4, fp4 = ql.quantize_4bit(x, "nf4", 128), ql.quantize_4bit(x, "fp4", 128)
    assert plots.levels_of(nf4, 2).numel() == 16
    assert plots.levels_of(fp4, 2).numel() == 15                  # FP4's +0 and -0 are one value
    assert plots.n_groups(nf4) == 512
    assert torch.equal(plots.group_values(x, nf4, 2), x.reshape(-1)[256:384])
    assert torch.equal(plots.group_values(x, ql.absmax_quantize(x, 4, axis=0), 7), x[7])
    with pytest.raises(TypeError, match="quantization result"):
        plots.levels_of(x)


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


def test_histogram_counts_big_tensors_by_sampling():
    big = torch.randn(2 ** 20)
    counts, edges = plots._base.histogram(big, 50, -6.0, 6.0)
    assert len(edges) == 51 and counts.sum() == pytest.approx(2 ** 20, rel=1e-3)


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


def test_nf4_construction_matches_the_code_book():
    parts = plots.nf4_construction()
    assert np.array_equal(parts["values"], codebooks.NF4.numpy())
    assert len(parts["p"]) == 15 and parts["z"].max() == pytest.approx(1.848, abs=1e-3)


def test_occupancy_and_entropy(x):
    levels, share = plots.occupancy(ql.quantize_4bit(x, "nf4", 64))
    assert len(levels) == 16 and share.sum() == pytest.approx(1.0)
    levels, share = plots.occupancy(ql.quantize_4bit(x, "fp4", 64))
    assert len(levels) == 15 and share.sum() == pytest.approx(1.0)
    levels, share = plots.occupancy(ql.absmax_quantize(x, 4, blocksize=64))
    assert len(levels) == 15 and levels[0] == -1.0
    assert plots.entropy_bits(np.full(16, 1 / 16)) == 4.0
    with pytest.raises(TypeError):
        plots.occupancy(ql.zeropoint_quantize(x, 4))


def test_nf4_view_nf4_spreads_weights_more_evenly_than_int4(x):
    results = {"nf4": ql.quantize_4bit(x, "nf4", 64), "int4": ql.absmax_quantize(x, 4, blocksize=64),
               "fp4": ql.quantize_4bit(x, "fp4", 64)}
    view = plots.NF4View().update(x, results)
    ent = {k: plots.entropy_bits(s) for k, (_, s) in view.shares.items()}
    assert ent["nf4"] > 3.8 and ent["nf4"] > ent["int4"] + 0.2 and ent["nf4"] > ent["fp4"]
    shown = view.lines["nf4"].get_ydata()
    assert np.allclose(shown, 100 * view.shares["nf4"][1])


def test_double_quant_view_saving_is_the_bits_per_param_difference():
    split = {(bs, dq): {"codes": 0.5, "absmax": (1 if dq else 4) / bs, "nested": 4 / (bs * 256) if dq else 0.0}
             for bs in (32, 64, 128) for dq in (False, True)}
    bpp = {dq: [ql.memory.bits_per_param("nf4", bs, double_quant=dq) for bs in (32, 64, 128)]
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


def test_distinct_per_block_tells_an_already_quantized_tensor():
    w = sources.synthetic("normal", 32 * 64, seed=0)
    q41 = ql.zeropoint_quantize(w, 4, blocksize=32, zero_point_domain="float").dequantize()
    assert int(plots.distinct_per_block(q41, 32).max()) <= 16
    assert int(plots.distinct_per_block(w, 32).min()) == 32
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


def test_fast_renderer_keeps_a_neighbours_label_that_reaches_into_a_redrawn_cell():
    # the zero-point view's "SQNR (dB)" label sits left of halfway to the middle panel: blanking the
    # middle panel for a redraw must not erase it (it did, seen in the browser test's screenshot)
    w = ql.widgets.zeropoint_explorer()
    for bits in (2, 5, 3):
        w.update(bits=bits)
        fast, full = _pixels(w.renderer.png()), _pixels(plots.to_png(w.figure))
        assert int((np.abs(fast - full).sum(axis=-1) > 60).sum()) < 100   # measured: 28 (anti-aliasing); 500+ erased


def test_plots_do_not_use_pyplot():
    code = ("import qlearn.plots, qlearn.widgets, sys; "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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
