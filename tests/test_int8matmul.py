"""qlearn.int8matmul: the int8 / LLM.int8 product, step by step, against bitsandbytes' Linear8bitLt."""

import pytest
import torch
from torch import nn

import qlearn as ql
from qlearn.int8matmul import BNB_RESCALE, int8_layers, int8_matmul, set_int8_threshold, simulate_int8

bnb = pytest.importorskip("bitsandbytes")


def _layer_and_input(seed=0, out_f=64, in_f=96, tokens=20):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_f, in_f, generator=g) * 0.05).to(torch.bfloat16)
    x = torch.randn(tokens, in_f, generator=g)
    x[:, [3, 50]] *= 12                                   # two outlier columns
    return w, x


def _bnb_linear(w, threshold):
    lin = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False, threshold=threshold)
    lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    return lin.to("cpu").eval()     # eval: in training mode bitsandbytes' CPU path skips int8 activations


@pytest.mark.parametrize("threshold", [0.0, 3.0, 6.0, float("inf")])
def test_int8_weights_reproduce_bitsandbytes_bit_for_bit_in_float32(threshold):
    w, x = _layer_and_input()
    lin = _bnb_linear(w, threshold)
    assert torch.equal(int8_matmul(x, w).w_codes, lin.weight.data)            # the model's CB
    with torch.no_grad():
        real = lin(x)                                                           # float32 in, float32 out
    ours = int8_matmul(x, w, threshold, outlier_weights="int8", rescale=BNB_RESCALE)
    assert torch.equal(ours.outputs, real)
    textbook = int8_matmul(x, w, threshold).outputs                             # 1/127**2: 1.8e-5 smaller
    assert 0 < (real - textbook).abs().max() <= 3e-5 * real.abs().max()


def test_the_papers_fp16_outlier_weights_differ_from_bitsandbytes():
    w, x = _layer_and_input()
    with torch.no_grad():
        real = _bnb_linear(w, 6.0)(x)
    paper = int8_matmul(x, w, 6.0, outlier_weights="fp16", rescale=BNB_RESCALE)
    bnb_like = int8_matmul(x, w, 6.0, outlier_weights="int8", rescale=BNB_RESCALE)
    assert paper.outlier_cols.tolist() == [3, 50] and torch.equal(paper.int8_part, bnb_like.int8_part)
    assert (paper.outputs - real).abs().max() > 100 * (bnb_like.outputs - real).abs().max() + 1e-3


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_bfloat16_inputs_match_bitsandbytes_with_its_two_roundings(threshold):
    w, x = _layer_and_input(seed=1)
    with torch.no_grad():
        real = _bnb_linear(w, threshold)(x.to(torch.bfloat16))
    ours = int8_matmul(x.to(torch.bfloat16), w, threshold, rescale=BNB_RESCALE)
    assert torch.equal(ours.output_in(torch.bfloat16), real)
    assert threshold == 0 or not torch.equal(ours.outputs.to(torch.bfloat16), real)   # one rounding is not it


def test_steps_by_hand():
    p = int8_matmul(torch.tensor([[1.0, 10.0], [0.5, -0.25]]), torch.tensor([[1.0, 1.0]]), threshold=6.0)
    assert p.outlier_cols.tolist() == [1] and p.outlier_share == 0.5
    # the whole column leaves the int8 codes; only the outlier itself leaves the row's absmax
    assert p.x_codes.tolist() == [[127, 0], [127, 0]] and p.x_scale.view(-1).tolist() == [1.0, 0.5]
    assert p.outlier_part.view(-1).tolist() == [10.0, -0.25]
    assert p.outputs.view(-1).tolist() == pytest.approx([11.0, 0.25], abs=1e-6)


def test_threshold_zero_and_inf_are_plain_vectorwise_int8_and_match_int8_vectorwise():
    w, x = _layer_and_input(seed=2)
    plain = int8_matmul(x, w, 0.0)
    assert torch.equal(plain.outputs, int8_matmul(x, w, float("inf")).outputs)
    ref = ql.int8_vectorwise(x.to(torch.float16).float())
    assert torch.equal(plain.x_codes, ref.codes)


def test_tensorwise_uses_one_scale_and_is_worse_with_outliers():
    w, x = _layer_and_input(seed=3)
    exact = x @ w.float().T
    tensor, vector = int8_matmul(x, w, granularity="tensor"), int8_matmul(x, w, granularity="vector")
    assert tensor.x_scale.numel() == 1 and tensor.w_scale.numel() == 1
    err = {k: ql.error_stats(exact, p.outputs)["sqnr_db"] for k, p in (("tensor", tensor), ("vector", vector))}
    assert err["vector"] > err["tensor"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=-1), "threshold"), (dict(threshold=True), "threshold"), (dict(granularity="row"), "granularity"),
    (dict(outlier_weights="fp32"), "outlier_weights"),
])
def test_bad_arguments(kwargs, match):
    w, x = _layer_and_input()
    with pytest.raises(ValueError, match=match):
        int8_matmul(x, w, **kwargs)
    with pytest.raises(ValueError, match="in_features"):
        int8_matmul(x, w[:, :10])


def test_simulate_int8_swaps_linear_layers_and_restores_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    x = torch.randn(5, 8)
    before = model(x)
    with simulate_int8(model, threshold=6.0) as shares:
        inside = model(x)
    assert len(shares) == 2 and torch.equal(model(x), before)
    manual = int8_matmul(x, model[0].weight, 6.0).outputs + model[0].bias
    manual = int8_matmul(torch.relu(manual), model[2].weight, 6.0).outputs + model[2].bias
    assert torch.allclose(inside, manual, atol=1e-6) and not torch.equal(inside, before)


def test_set_int8_threshold_finds_linear8bitlt_layers():
    w, _ = _layer_and_input()
    model = nn.Sequential(_bnb_linear(w, 6.0), nn.Linear(64, 4))
    assert int8_layers(model) == [model[0]] and set_int8_threshold(model, 3.0) == 1
    assert model[0].state.threshold == 3.0
    with pytest.raises(ValueError, match="int8"):
        set_int8_threshold(nn.Sequential(nn.Linear(2, 2)), 1.0)


class _TinyLM(nn.Module):
    """Embedding + two linear layers; called like a causal LM (input_ids=...)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, input_ids):
        return self.b(torch.relu(self.a(self.embed(input_ids))))


def test_inputs_of_captures_every_named_layer_in_one_pass():
    from qlearn.outliers import inputs_of

    torch.manual_seed(0)
    model = _TinyLM()
    calls = []
    model.embed.register_forward_hook(lambda *a: calls.append(1))

    def tok(text, return_tensors="pt"):
        return {"input_ids": torch.tensor([[len(w) % 10 for w in text.split()]])}

    got = inputs_of(model, tok, ["a", "b"], "one three seven")
    ids = torch.tensor([[3, 5, 5]])
    assert len(calls) == 1 and torch.equal(got["a"], model.embed(ids)[0])
    assert torch.equal(got["b"], torch.relu(model.a(model.embed(ids)))[0])
    assert not model.a._forward_pre_hooks                      # hooks removed
    with pytest.raises(ValueError, match="not linear"):
        inputs_of(model, tok, ["embed"], "x")


def test_figures_draw_the_steps_and_the_sweep():
    import math

    import pandas as pd

    from qlearn.plots._base import to_png
    from qlearn.plots.int8 import decomposition_figure, threshold_sweep_figure

    w, x = _layer_and_input()
    steps = {t: int8_matmul(x, w, threshold=t) for t in (0.0, 6.0)}
    fig = decomposition_figure(x, steps[6.0], x @ w.float().T, steps[0.0], threshold=6.0, title="t")
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets()[:, 0].tolist() == [3, 50]              # the outlier columns marked
    assert len(fig.axes[3].lines) == 2 and to_png(fig)[:4] == b"\x89PNG"
    sweep = pd.DataFrame({"perplexity": [18.2, 17.3, 17.7, 18.2], "16-bit columns (%)": [0, 15.9, 0.44, 0]},
                         index=[0.0, 1.0, 6.0, math.inf])
    fig = threshold_sweep_figure(sweep, 17.2)
    xs = fig.axes[0].lines[0].get_xdata().tolist()
    assert xs == sorted(xs) and len(xs) == 4                                        # 0 first, inf last
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0 (off)", "1", "6", "inf"]
