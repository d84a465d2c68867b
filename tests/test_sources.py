"""Weight sources: synthetic samples, layers of a model (bitsandbytes layers dequantized), inputs."""

import pytest
import torch
from torch import nn

import qlearn as ql
from qlearn import sources


@pytest.mark.parametrize("kind", sources.SYNTHETIC_KINDS)
def test_synthetic_is_seeded_float32_with_the_std_asked(kind):
    x = sources.synthetic(kind, 50_000, seed=3, std=0.02)
    assert x.dtype == torch.float32 and x.shape == (50_000,)
    assert torch.equal(x, sources.synthetic(kind, 50_000, seed=3, std=0.02))
    assert not torch.equal(x, sources.synthetic(kind, 50_000, seed=4, std=0.02))
    if kind != "outliers":
        assert float(x.std()) == pytest.approx(0.02, rel=1e-3)


def test_synthetic_shapes_of_the_distributions():
    n = 65536
    outliers = sources.synthetic("outliers", n, seed=0)
    bulk = outliers[outliers.abs() < 0.2]
    assert int((outliers.abs() > 0.3).sum()) == n // 2048               # 32 values at 20 std of the rest
    assert float(outliers.abs().max()) == pytest.approx(20 * 0.02, rel=0.02)
    assert float(bulk.std()) == pytest.approx(0.02, rel=0.02)
    skewed = sources.synthetic("skewed", n, seed=0)
    assert float(skewed.mean()) > 0.5 * 0.02 and float(skewed.min()) > -0.01  # shifted, short left tail
    t = sources.synthetic("student_t", n, seed=0)
    normal = sources.synthetic("normal", n, seed=0)
    assert float(t.abs().max()) > 2 * float(normal.abs().max())         # heavier tails
    assert sources.synthetic("normal", 4096, shape=(64, 64)).shape == (64, 64)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="uniform"), "kind must be one of"),
    (dict(n=0), "n must be an int >= 1; got 0"),
    (dict(n=10, shape=(3, 3)), "holds 9 values"),
])
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sources.synthetic(**kwargs)


def test_shifted_moves_by_standard_deviations():
    x = sources.synthetic("normal", 4096, seed=0)
    assert float(sources.shifted(x, 2.0).mean() - x.mean()) == pytest.approx(2 * float(x.std()), rel=1e-4)
    assert sources.shifted(x, 0) is x


def _toy():
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


def test_layer_weight_and_iteration():
    model = _toy()
    assert sources.linear_layer_names(model) == ["0", "2"]
    w = sources.layer_weight(model, "2")
    assert w.dtype == torch.float32 and torch.equal(w, model[2].weight.detach())
    assert [(n, tuple(w.shape)) for n, w in sources.linear_layers(model)] == [("0", (4, 8)), ("2", (2, 4))]


def test_layer_weight_bad_names_say_what_exists():
    model = _toy()
    with pytest.raises(ValueError, match=r"layer 'nope' does not exist.*linear layers are: 0, 2"):
        sources.layer_weight(model, "nope")
    with pytest.raises(ValueError, match="'1' is not a linear layer"):
        sources.layer_weight(model, "1")
    with pytest.raises(TypeError, match="nn.Module"):
        sources.layer_weight("model", "0")
    with pytest.raises(TypeError, match="name must be a str"):
        sources.layer_weight(model, 0)


def test_bitsandbytes_layers_are_dequantized():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    ref = nn.Linear(128, 32, bias=False)
    l4 = bnb.nn.Linear4bit(128, 32, bias=False, quant_type="nf4", compress_statistics=False)
    l4.weight = bnb.nn.Params4bit(ref.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                  compress_statistics=False)
    l8 = bnb.nn.Linear8bitLt(128, 32, bias=False, has_fp16_weights=False)
    l8.weight = bnb.nn.Int8Params(ref.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    model = nn.Sequential(l4.to("cpu"), l8.to("cpu"))
    w4, w8 = (w for _, w in sources.linear_layers(model))
    ours = ql.quantize_4bit(ref.weight.data, "nf4", 64).dequantize()
    assert torch.equal(w4, ours)                                   # same NF4 round trip, bit for bit
    w = ref.weight.detach()
    assert float((w8 - w).abs().max()) <= float(w.abs().max()) / 127


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.calls = 0

    def forward(self, input_ids):
        self.calls += 1
        return self.down(torch.relu(self.up(self.embed(input_ids))))


class _Tok:
    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [ord(c) % 50 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def test_layer_inputs_captures_what_the_layer_receives():
    model = _TinyLM()
    x = sources.layer_inputs(model, _Tok(), "down", "hello world")
    assert x.shape == (11, 32) and x.dtype == torch.float32
    ids = _Tok()("hello world", return_tensors="pt")["input_ids"]
    expected = torch.relu(model.up(model.embed(ids)))[0]
    assert torch.allclose(x, expected)
    assert not model.down._forward_pre_hooks                     # the hook is removed
    assert sources.layer_inputs(model, _Tok(), "up", "abc", max_tokens=2).shape == (2, 16)


def test_layer_inputs_bad_input():
    with pytest.raises(ValueError, match="does not exist"):
        sources.layer_inputs(_TinyLM(), _Tok(), "middle", "hi")
    with pytest.raises(ValueError, match="non-empty string"):
        sources.layer_inputs(_TinyLM(), _Tok(), "up", "  ")
