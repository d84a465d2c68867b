"""fake_quantize: weights become record.dequantize() bit for bit, and restore gives the originals back."""

import pytest
import torch
from torch import nn

import qlearn as ql
from qlearn.fakequant import FORMAT_KINDS, fake_quantize, parse_format, quantizable_layers, quantizer

FORMATS = ["bf16", "int8", "nf4", "nf4/32", "nf4+dq", "nf4+dq/256", "fp4/128", "fp4+dq/64", "int4/64", "int4-zp/32"]


class Tiny(nn.Module):
    """Embedding, two linear layers and an lm_head tied to the embedding, in bf16."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(50, 64)
        self.up, self.down = nn.Linear(64, 96, bias=False), nn.Linear(96, 64, bias=False)
        self.lm_head = nn.Linear(64, 50, bias=False)
        self.lm_head.weight = self.embed.weight
        with torch.no_grad():
            for p in (self.embed.weight, self.up.weight, self.down.weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        self.to(torch.bfloat16)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        return self.lm_head(self.down(torch.relu(self.up(self.embed(ids)))))


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_weight_is_the_record_dequantized_and_restore_is_exact(fmt):
    model = Tiny()
    before = _weights(model)
    with fake_quantize(model, {"up": fmt, "down": fmt}) as fq:
        for name in ("up", "down"):
            expected = quantizer(fmt)(before[f"{name}.weight"]).dequantize().to(torch.bfloat16)
            assert torch.equal(getattr(model, name).weight, expected)
            assert getattr(model, name).weight.dtype == torch.bfloat16
        assert set(fq.originals) == (set() if fmt == "bf16" else {"up", "down"})
        changed = any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
        assert changed == (fmt != "bf16")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not fq.originals


def test_only_changed_layers_are_kept_and_bits_are_the_records():
    model = Tiny()
    fq = fake_quantize(model, {"up": "nf4+dq/64", "down": "bf16"})
    assert list(fq.originals) == ["up"]
    record = ql.quantize_4bit(fq.originals["up"], "nf4", 64, double_quant=True)
    assert fq.nbytes["up"] == record.nbytes and fq.layer_bits()["up"] == record.bits_per_param
    assert fq.layer_bits()["down"] == 16.0 and fq.formats == {"up": "nf4+dq/64", "down": "bf16"}
    # over the plan: up's 6144 weights in nf4+dq, down's 6144 in bf16 (2 bytes each)
    assert fq.numel == {"up": 96 * 64, "down": 64 * 96}
    assert fq.bits_per_param == 8 * (record.nbytes + 2 * 6144) / (2 * 6144)
    fq.restore()
    assert torch.equal(model.up.weight, fq.model.up.weight)


def test_values_dtype_gives_an_fp32_copy_the_bf16_models_values():
    bf16, fp32 = Tiny(), Tiny().float()
    fake_quantize(bf16, {"down": "nf4+dq/32"}, keep_originals=False)
    fake_quantize(fp32, {"down": "nf4+dq/32"}, keep_originals=False, values_dtype=torch.bfloat16)
    assert fp32.down.weight.dtype == torch.float32 and torch.equal(fp32.down.weight, bf16.down.weight.float())


def test_a_function_works_as_a_format_and_the_forward_changes():
    model, ids = Tiny(), torch.arange(10)[None]
    with torch.no_grad():
        ref = model(ids)
    with fake_quantize(model, {"down": lambda w: ql.absmax_quantize(w, bits=3)}):
        with torch.no_grad():
            assert not torch.equal(model(ids), ref)
    with torch.no_grad():
        assert torch.equal(model(ids), ref)


def test_restored_after_an_error_inside_the_block_and_half_way_through_a_plan():
    model = Tiny()
    before = _weights(model)
    with pytest.raises(RuntimeError), fake_quantize(model, {"up": "nf4"}):
        raise RuntimeError("boom")
    assert torch.equal(model.up.weight, before["up.weight"])
    with pytest.raises(ValueError, match="unknown format"):
        fake_quantize(model, {"up": "nf4", "down": "nf5"})   # up was changed first, then put back
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_tied_lm_head_is_not_quantizable():
    model = Tiny()
    assert quantizable_layers(model) == ["up", "down"]
    with pytest.raises(ValueError, match="lm_head"):
        fake_quantize(model, {"lm_head": "nf4"})


BAD_FORMATS = [
    (5, TypeError, "must be a str"),
    ("nf5", ValueError, "unknown format"),
    ("nf4/48", ValueError, "blocksize must be one of"),
    ("int8/64", ValueError, "takes no blocksize"),
    ("bf16/32", ValueError, "takes no blocksize"),
]


@pytest.mark.parametrize("fmt, error, match", BAD_FORMATS)
def test_bad_formats(fmt, error, match):
    with pytest.raises(error, match=match):
        parse_format(fmt)


def test_every_kind_parses_with_its_default_blocksize():
    assert [parse_format(k) for k in FORMAT_KINDS] == [
        ("bf16", None), ("int8", None), ("nf4", 64), ("nf4+dq", 64), ("fp4", 64), ("fp4+dq", 64),
        ("int4", 64), ("int4-zp", 64), ("mxfp4", 32), ("nvfp4", 16), ("fp8-e4m3", 128), ("fp8-e5m2", 128)]


def test_bad_plans():
    model = Tiny()
    with pytest.raises(TypeError, match="plan must be a mapping"):
        fake_quantize(model, [("up", "nf4")])
    with pytest.raises(TypeError, match="format name or a callable"):
        fake_quantize(model, {"up": 3})
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantizable_layers("model")


def test_docstring_examples():
    import doctest

    import qlearn.fakequant

    result = doctest.testmod(qlearn.fakequant)
    assert result.failed == 0 and result.attempted >= 4
