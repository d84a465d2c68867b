"""GPTQ, AWQ, HQQ and round-to-nearest on small layers: each against its definition, the equalities
that pin them down (GPTQ with H = I is RTN; AWQ with alpha = 0 is RTN; HQQ with 0 iterations is
min/max), the error each one minimises, the hqq library where it is installed, and the calibration
text kept apart from the evaluation text."""

import numpy as np
import pytest
import torch

from qlearn.intquant import absmax_quantize, zeropoint_quantize
from qlearn.methods import AWQQuantized, GroupQuantized, awq, awq_scales, gptq, hessian, hqq, rtn
from qlearn.methods.hqq import optimize_zero, shrink_lp
from qlearn.methods.rtn import group_params, quantize_column


def _layer(out=96, inp=256, seed=0):
    """A weight (out, inp) and calibration inputs (512, inp) whose channels differ in size (as LLM
    activations do: a few channels 10x the rest) and are correlated (a shared low-rank part)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.02
    scale = torch.ones(inp)
    scale[torch.randperm(inp, generator=g)[:8]] = 10.0
    x = (torch.randn(512, inp, generator=g) + torch.randn(512, 8, generator=g) @ torch.randn(8, inp, generator=g))
    return w, x * scale


def _out_err(x, w, rec):
    return float(((x @ (rec.dequantize(torch.float32) - w).T) ** 2).mean())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("blocksize", [32, 96, None])
def test_rtn_is_qlearns_absmax_or_zeropoint_per_row_group(symmetric, blocksize):
    w, _ = _layer()
    r = rtn(w, blocksize=blocksize, symmetric=symmetric)
    g = blocksize or w.shape[1]
    for k, chunk in enumerate(w.split(g, dim=1)):                 # 96 does not divide 256: a short last group
        ref = (absmax_quantize if symmetric else zeropoint_quantize)(chunk, 4, axis=0)
        assert torch.equal(r.codes[:, k * g:(k + 1) * g], ref.codes)
        assert torch.equal(r.dequantize()[:, k * g:(k + 1) * g], ref.dequantize())
    groups = -(-w.shape[1] // g)
    assert r.nbytes == w.numel() // 2 + 4 * 96 * groups + (0 if symmetric else 96 * groups // 2)


def test_rtn_worked_numbers_and_bits():
    r = rtn(torch.tensor([[0.07, 0.034, -0.02, 0.0]]), blocksize=4)
    assert r.codes.tolist() == [[7, 3, -2, 0]] and r.scale.shape == (1, 1)
    assert rtn(torch.zeros(576, 576), blocksize=128).bits_per_param == 4 + 32 * 5 / 576


@pytest.mark.parametrize("symmetric", [True, False])
def test_group_params_and_quantize_column_are_rtns_arithmetic(symmetric):
    w, _ = _layer()
    s, z = group_params(w[:, :64], 4, symmetric)
    codes = torch.stack([quantize_column(w[:, j], s, z, 4, symmetric) for j in range(64)], dim=1)
    assert torch.equal(codes, rtn(w[:, :64], blocksize=64, symmetric=symmetric).codes.float())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("blocksize", [64, 96])
def test_gptq_with_identity_hessian_is_rtn(symmetric, blocksize):
    w, _ = _layer()
    q = gptq(w, torch.eye(w.shape[1]), blocksize=blocksize, symmetric=symmetric, lazy_batch=48)
    r = rtn(w, blocksize=blocksize, symmetric=symmetric)
    assert isinstance(q, GroupQuantized) and torch.equal(q.codes, r.codes) and torch.equal(q.scale, r.scale)
    assert q.nbytes == r.nbytes


def test_gptq_lowers_the_output_error_it_targets():
    w, x = _layer()
    h = hessian(x)
    errs = {name: _out_err(x, w, q) for name, q in {
        "rtn": rtn(w, blocksize=64), "gptq": gptq(w, h, blocksize=64),
        "act_order": gptq(w, h, blocksize=64, act_order=True)}.items()}
    assert errs["gptq"] < 0.8 * errs["rtn"] and errs["act_order"] < errs["rtn"], errs


def test_gptq_lazy_blocks_change_nothing_but_float_order():
    """Lazy batch updates are a reordering of the same arithmetic: block 128 vs block 16 agree."""
    w, x = _layer()
    h = hessian(x)
    a, b = gptq(w, h, blocksize=64, lazy_batch=128), gptq(w, h, blocksize=64, lazy_batch=16)
    assert float((a.codes != b.codes).float().mean()) < 0.002


def test_gptq_moved_weights_show_the_compensation():
    w, x = _layer()
    q, moved = gptq(w, hessian(x), blocksize=64, return_moved=True)
    assert torch.equal(moved[:, 0], w[:, 0])                      # column 0: nothing rounded before it
    assert float((moved[:, 1:] - w[:, 1:]).abs().mean()) > 0       # later columns were moved
    s = q.scale[:, 0]
    assert torch.equal(q.codes[:, 5].float(), torch.round(moved[:, 5] / s).clamp(-7, 7))


def test_gptq_dead_input_columns_become_zero():
    w, x = _layer()
    x[:, 3] = 0
    q = gptq(w, hessian(x), blocksize=64)
    assert torch.equal(q.codes[:, 3], torch.zeros(96, dtype=torch.int8))


def test_hessian_worked_number():
    assert hessian(torch.tensor([[1.0, 2.0], [3.0, 0.0]])).tolist() == [[10.0, 2.0], [2.0, 4.0]]


def test_awq_alpha_zero_is_rtn_and_search_never_loses_on_calibration():
    w, x = _layer()
    a = awq(w, x, blocksize=64)
    r = rtn(w, blocksize=64)
    assert isinstance(a, AWQQuantized) and a.errors[0] == pytest.approx(_out_err(x, w, r), rel=1e-5)
    assert _out_err(x, w, a) <= _out_err(x, w, r) and a.alpha > 0       # big channels: a scale helps
    assert torch.equal(awq(w, x, blocksize=64, n_grid=1).dequantize(), r.dequantize())
    assert a.bits_per_param == pytest.approx(r.bits_per_param + 16 / 96)


def test_awq_scales_worked_number():
    assert [round(v, 4) for v in awq_scales(torch.tensor([1.0, 4.0]), 0.5).tolist()] == [0.7071, 1.4142]


def test_awq_protects_the_big_channels():
    w, x = _layer()
    a, r = awq(w, x, blocksize=64), rtn(w, blocksize=64)
    big = x.abs().mean(0) > 3 * x.abs().mean(0).median()
    err = lambda q: (q.dequantize() - w).abs().mean(0)                  # noqa: E731  per input channel
    assert float(err(a)[big].mean()) < float(err(r)[big].mean())


def test_hqq_lowers_the_lp_error_and_zero_iterations_is_minmax():
    w, _ = _layer()
    h, h0 = hqq(w, blocksize=64), hqq(w, blocksize=64, iters=0)
    lp = lambda q: float(((q.dequantize() - w).abs() ** 0.7).mean())     # noqa: E731
    assert lp(h) < lp(h0)
    s = 15 / (w.reshape(-1, 64).amax(1) - w.reshape(-1, 64).amin(1))
    assert torch.equal(h0.codes.reshape(-1, 64), torch.round((w.reshape(-1, 64) - w.reshape(-1, 64).amin(1, True))
                                                             * s[:, None]).clamp(0, 15).to(torch.uint8))
    assert h.bits_per_param == 4 + 32 / 64 and h.scale.dtype == torch.float16


def test_hqq_short_last_group():
    w, _ = _layer()
    h = hqq(w, blocksize=96)                                        # 256 = 96 + 96 + 64
    assert h.scale.shape == (96, 3) and h.dequantize().shape == w.shape


def test_shrink_worked_numbers():
    assert round(shrink_lp(torch.tensor([1.0]), 10.0).item(), 4) == 0.9
    assert shrink_lp(torch.tensor([0.0, 1e-6]), 10.0).tolist() == [0.0, 0.0]
    assert shrink_lp(torch.tensor([-2.0]), 10.0, p=1).item() == pytest.approx(-1.9)


def test_hqq_equals_the_hqq_library():
    """hqq 0.2.8 on CPU (float32): the optimised zeros are equal and the codes are equal."""
    hqq_lib = pytest.importorskip("hqq.core.quantize")
    from hqq.core.optimize import optimize_weights_proximal_legacy

    w, _ = _layer()
    wg = w.reshape(-1, 64)
    s = 15 / (wg.amax(1, keepdim=True) - wg.amin(1, keepdim=True))
    z = -wg.amin(1, keepdim=True) * s
    _, _, z_lib = optimize_weights_proximal_legacy(wg, s, z, [0, 15], axis=1, device="cpu")
    assert torch.equal(optimize_zero(wg, s, z, 15), z_lib)
    w_q, meta = hqq_lib.Quantizer.quantize(w, nbits=4, group_size=64, axis=1, device="cpu", bitpack=False,
                                           compute_dtype=torch.float32)
    mine = hqq(w, blocksize=64)
    assert torch.equal(w_q.reshape(w.shape).to(torch.uint8), mine.codes)
    assert torch.equal(meta["zero"].view(96, -1).half(), mine.zero_point)


@pytest.mark.parametrize("fn", [rtn, hqq, lambda w, **k: gptq(w, torch.eye(w.shape[-1]), **k),
                                lambda w, **k: awq(w, torch.ones(4, w.shape[-1]), **k)])
@pytest.mark.parametrize("bad, kwargs, error", [
    (torch.zeros(8), {}, ValueError),                                  # not 2-D
    (torch.zeros(4, 8, dtype=torch.int64), {}, TypeError),
    (torch.zeros(4, 8), {"blocksize": 0}, ValueError),
    (torch.zeros(4, 8), {"blocksize": 2.5}, ValueError),
])
def test_bad_inputs_name_the_argument(fn, bad, kwargs, error):
    with pytest.raises(error):
        fn(bad, **kwargs)


def test_gptq_hessian_shape_is_checked():
    with pytest.raises(ValueError, match=r"h must be \(8, 8\)"):
        gptq(torch.zeros(4, 8), torch.eye(4))


def test_calibration_text_does_not_overlap_the_evaluation_text():
    """No 64-character span of the calibration text occurs in the evaluation text."""
    from qlearn.calibration import calibration_text
    from qlearn.evaluate import offline_text

    calib, evaluation = calibration_text("methods"), offline_text()
    assert len(calib) > 50_000
    spans = {evaluation[i:i + 64] for i in range(0, len(evaluation) - 64)}
    hits = [calib[i:i + 64] for i in range(0, len(calib) - 64, 16) if calib[i:i + 64] in spans]
    assert hits == []


def test_quantize_layer_dispatches_and_checks():
    from qlearn.methods import LAYER_METHODS, quantize_layer
    from qlearn.methods.layer import synthetic_layer

    w, x = synthetic_layer(16, 256, tokens=64)
    for method in LAYER_METHODS:
        rec, moved = quantize_layer(method, w, x, 64)
        assert rec.dequantize(torch.float32).reshape(w.shape).shape == w.shape
        assert (moved is not None) == (method == "gptq")
    with pytest.raises(ValueError, match="calibration inputs"):
        quantize_layer("gptq", w)
    with pytest.raises(ValueError, match="Q4_K"):
        quantize_layer("Q3_K", w)


def test_method_explorer_driven_by_its_controls(tmp_path):
    from qlearn.methods.layer import synthetic_layer
    from qlearn.methods.rtn import column_error
    from qlearn.widgets.methods import MethodExplorer

    w, x = synthetic_layer(32, 128, tokens=128)
    e = MethodExplorer({"small": w}, {"small": x}, blocksize=32)
    assert e.error is None and set(e.controls) == {"layer", "method", "blocksize", "row"}
    assert e.shift is not None and e.out_err < e.rtn_out_err          # GPTQ by default: compensation shown
    first = e.image.value
    e.update(method="awq", row=7)
    assert e.error is None and e.shift is None and e.image.value != first
    w = e.weights[e.controls["layer"].value]
    assert np.allclose(e.col_err, column_error(w, e.record.dequantize()).numpy())
    e.controls["method"].value = "Q4_1"                               # a control change redraws too
    assert e.record.qtype == "Q4_1" and e.error is None
    e.update(method="nope")
    assert "not offered" in e.error
    e.update(row=10_000)
    assert e.controls["row"].value == 31 and e.error is None
    (tmp_path / "methods_explorer.png").write_bytes(e.image.value)


def test_frontier_and_block_figures_draw_what_they_are_given():
    from qlearn.plots.methods import block_bytes_figure, frontier_figure

    rows = [{"method": "bf16", "blocksize": None, "bits": 16.0, "ppl": 14.7},
            {"method": "rtn", "blocksize": 128, "bits": 4.28, "ppl": 25.0},
            {"method": "gptq", "blocksize": 128, "bits": 4.28, "ppl": 19.0}]
    fig = frontier_figure(rows)
    ax = fig.axes[0]
    assert len(ax.collections) == 2 and [t.get_text() for t in ax.texts][1:] == ["rtn g128", "gptq g128"]
    fig = block_bytes_figure([("Q4_1", np.arange(20, dtype=np.uint8), [("d", 0, 2), ("m", 2, 4), ("qs", 4, 20)])])
    assert len(fig.axes[0].patches) == 20 and fig.axes[0].texts[0].get_text() == "00"
