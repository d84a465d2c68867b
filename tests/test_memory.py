"""qlearn.memory: bits per weight, estimates at any size, and footprint on small modules.

The embedded-model checks (footprint == get_memory_footprint, quant state read from the model,
estimate within 2%) are in test_models.py, which loads the real model once per mode.
"""

import math

import pytest
import torch

from qlearn import memory


def test_bits_per_param_4bit():
    assert memory.bits_per_param("nf4", 64) == 4.5
    assert memory.bits_per_param("nf4+dq", 64) == 4.126953125
    assert memory.bits_per_param("fp4", 128) == 4.25
    # QLoRA: double quant saves 0.373 bit/param at blocksize 64
    assert math.isclose(memory.bits_per_param("nf4") - memory.bits_per_param("nf4+dq"),
                        0.373046875)


def test_bits_per_param_int8_and_floats():
    assert memory.bits_per_param("int8", in_features=4096) == 8 + 32 / 4096
    assert memory.bits_per_param("bf16") == 16.0
    assert memory.bits_per_param("fp32") == 32.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="int4"), "unknown mode 'int4'; allowed: fp32, bf16, fp16, int8, nf4, nf4\\+dq, fp4, fp4\\+dq"),
    (dict(mode="nf4-dq"), "unknown mode"),
    (dict(mode="nf4", blocksize=48), "blocksize"),
    (dict(mode="nf4", blocksize=16), "blocksize"),
    (dict(mode="nf4+dq", dq_blocksize=100), "dq_blocksize"),
    (dict(mode="int8"), "in_features"),
])
def test_bits_per_param_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory.bits_per_param(**kwargs)


def test_llama2_7b_sizes():
    shape = memory.model_shape("llama-2-7b")
    assert shape.linear_params + shape.unquantized_params == 6_738_415_616   # Llama-2-7B's count
    fp16 = memory.estimate("llama-2-7b", "fp16")
    int8 = memory.estimate("llama-2-7b", "int8")
    nf4 = memory.estimate("llama-2-7b", "nf4")
    nf4dq = memory.estimate("llama-2-7b", "nf4+dq")
    assert fp16.true_bytes == fp16.reported_bytes == 2 * 6_738_415_616
    assert int8.weight_bytes == 6_476_005_376 and int8.unquantized_bytes == 524_820_480
    assert int8.quant_state_bytes == 4 * 32 * (4 * 4096 + 2 * 11008 + 4096)   # SCB: one float32 a row
    assert nf4.weight_bytes == 6_476_005_376 // 2
    assert nf4.quant_state_bytes == 6_476_005_376 // 64 * 4
    assert nf4.reported_bytes == nf4dq.reported_bytes   # get_memory_footprint cannot see double quant
    # a typical tutorial's claims: int8 is ~1/2 of fp16 (not 1/4), nf4 does not quite halve int8 again
    assert 0.51 < int8.true_bytes / fp16.true_bytes < 0.53
    assert 0.54 < nf4dq.true_bytes / int8.true_bytes < 0.57


def test_estimate_matches_bits_per_param():
    """The per-weight scales in an estimate agree with bits_per_param for a big layer."""
    cfg = dict(hidden_size=4096, intermediate_size=16384, num_hidden_layers=1, vocab_size=1,
               num_attention_heads=32)
    for dq in (False, True):
        e = memory.estimate(cfg, "nf4+dq" if dq else "nf4")
        bits = 8 * (e.weight_bytes + e.quant_state_bytes) / e.quantized_params
        assert math.isclose(bits, memory.bits_per_param("nf4+dq" if dq else "nf4"), rel_tol=1e-4)


def test_estimate_bare_count_and_kv_cache():
    e = memory.estimate(7e9, "nf4")
    assert math.isclose(e.true_bytes, 7e9 * 4.5 / 8, rel_tol=1e-6)
    kv = memory.estimate("llama-2-7b", "bf16", context_length=4096, batch_size=1)
    assert kv.kv_cache_bytes == 2 * 32 * 32 * 128 * 4096 * 2   # 2 GiB at 4k context
    gqa = memory.estimate("llama-2-70b", "nf4", context_length=4096)
    assert gqa.kv_cache_bytes == 2 * 80 * 8 * 128 * 4096 * 2   # grouped-query attention: 8 kv heads
    assert gqa.true_bytes == memory.estimate("llama-2-70b", "nf4").true_bytes   # the cache is its own field


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (("llama-2-7b", "int4"), {}, ValueError, "mode"),
    (("llama-2-7b", "nf4"), dict(double_quant=True), TypeError, "double_quant"),   # the mode says it: "nf4+dq"
    (("llama-2-7b", 4), {}, TypeError, "mode must be a str"),
    (("llama-3-7b", "nf4"), {}, ValueError, "preset"),
    ((-5, "nf4"), {}, ValueError, "positive"),
    ((7e9, "nf4"), dict(context_length=10), ValueError, "config"),
    (({"hidden_size": 8}, "nf4"), {}, TypeError, "intermediate_size"),
])
def test_estimate_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        memory.estimate(*args, **kwargs)


def _reported(model):
    """transformers' get_memory_footprint, restated: parameters + buffers."""
    return (sum(p.nelement() * p.element_size() for p in model.parameters())
            + sum(b.nelement() * b.element_size() for b in model.buffers()))


def test_footprint_plain_module():
    model = torch.nn.Sequential(torch.nn.Embedding(100, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32))
    model.register_buffer("inv_freq", torch.zeros(8))
    fp = memory.footprint(model)
    assert fp.reported_bytes == _reported(model)
    assert fp.linear_weight_bytes == 16 * 32 * 4
    assert fp.quant_state_bytes == 0 and fp.quantized_params == 0
    assert math.isnan(fp.bits_per_quantized_weight)


@pytest.mark.parametrize("quant_type, dq", [("nf4", False), ("nf4", True), ("fp4", False)])
def test_footprint_bnb_linear4bit(quant_type, dq):
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(256, 128, bias=False, compress_statistics=dq, quant_type=quant_type)
    layer.load_state_dict({"weight": torch.randn(128, 256)})
    layer = layer.to("cpu")   # quantizes on .to(), as transformers does
    qs = layer.weight.quant_state
    fp = memory.footprint(layer)
    assert fp.reported_bytes == _reported(layer) == 128 * 256 // 2
    expected = qs.absmax.nbytes + (qs.offset.nbytes + qs.state2.absmax.nbytes if dq else 0)
    assert fp.quant_state_bytes == expected == (512 + 4 + 2 * 4 if dq else 512 * 4)   # 512 blocks; 2 nested
    assert fp.quantized_params == 128 * 256


def test_footprint_bad_input():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        memory.footprint("model")
