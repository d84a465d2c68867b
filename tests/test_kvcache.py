"""qlearn.kvcache: KIVI-style grouping checked against a loop reference, the bytes a quantized cache stores,
the residual kept bit-exact, transformers' own QuantizedCache measured, and the scoring path checked
against one plain forward pass on a tiny random Llama (no download)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from qlearn import kvcache as kv


def _reference(x_groups: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric quantize -> dequantize of each row on its own [min, max], written out row by row."""
    out = torch.empty_like(x_groups)
    for i, row in enumerate(x_groups):
        lo, hi = row.min(), row.max()
        scale = (hi - lo) / (2 ** bits - 1)
        q = torch.clamp(torch.round((row - lo) / scale), 0, 2 ** bits - 1) if scale > 0 else torch.zeros_like(row)
        out[i] = q * scale + lo
    return out


class _Layer:
    def __init__(self, k, v):
        self.keys, self.values = k, v


class _Cache:
    def __init__(self, pairs):
        self.layers = [_Layer(k, v) for k, v in pairs]


def _kv(tokens=64, heads=2, dim=64, layers=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, heads, tokens, dim, generator=g).to(dtype),
             torch.randn(1, heads, tokens, dim, generator=g).to(dtype)) for _ in range(layers)]


def test_keys_share_a_scale_per_channel_over_a_group_of_tokens():
    k = torch.randn(1, 2, 64, 8, generator=torch.Generator().manual_seed(1))
    q = kv.quantize_keys(k, bits=3, group=32)
    rows = torch.stack([k[0, h, t0:t0 + 32, c] for h in range(2) for t0 in (0, 32) for c in range(8)])
    ref = _reference(rows, 3)
    got = torch.stack([q.dequantize()[0, h, t0:t0 + 32, c] for h in range(2) for t0 in (0, 32) for c in range(8)])
    assert q.record.scale.numel() == 2 * 2 * 8
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_values_share_a_scale_per_token_over_a_group_of_channels():
    v = torch.randn(1, 2, 5, 64, generator=torch.Generator().manual_seed(2))
    q = kv.quantize_values(v, bits=4, group=32)
    rows = v.reshape(-1, 32)                                   # (1 * 2 * 5 * 2, 32): consecutive channels
    torch.testing.assert_close(q.dequantize().reshape(-1, 32), _reference(rows, 4), rtol=0, atol=1e-6)
    assert q.record.scale.numel() == 20


def test_per_channel_keys_beat_per_token_when_one_channel_is_large():
    """KIVI's reason for quantizing keys per channel: a channel that is large for every token."""
    k = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(3))
    k[..., 5] *= 50
    per_channel = kv.quantize_keys(k, 4, 32).dequantize()
    per_token = kv.quantize_values(k, 4, 32).dequantize()
    others = torch.arange(64) != 5
    # per token, channel 5 widens the step of the 31 channels grouped with it; per channel only its own
    assert (per_channel - k)[..., others].norm() < 0.2 * (per_token - k)[..., others].norm()


@pytest.mark.parametrize("bits, expected", [(4, 6.0), (2, 4.0), (8, 10.0)])
def test_bits_per_value_include_a_float32_scale_and_minimum_per_group(bits, expected):
    q = kv.quantize_values(torch.randn(1, 1, 4, 64), bits=bits, group=32)
    assert q.bits_per_value == expected
    assert q.nbytes == math.ceil(4 * 64 * bits / 8) + 8 * 8


@pytest.mark.parametrize("bits", [4, 2])
def test_a_quantized_cache_is_smaller_by_the_expected_ratio(bits):
    pairs = _kv(tokens=64, dtype=torch.bfloat16)
    cache = _Cache(pairs)
    held = kv.cache_nbytes(cache)
    r = kv.fake_quantize_cache(cache, bits=bits, group=32)
    assert r.held_bytes == held == r.bytes_16bit == 2 * 2 * (2 * 64 * 64) * 2
    assert r.ratio_vs_16bit == pytest.approx(16 / (bits + 2), rel=1e-12)
    assert r.quantized_tokens == 64
    assert cache.layers[0].keys.dtype == torch.bfloat16 and not torch.equal(cache.layers[0].keys, pairs[0][0])


def test_the_residual_tokens_are_kept_bit_exact():
    pairs = _kv(tokens=96)
    cache = _Cache(copy.deepcopy(pairs))
    r = kv.fake_quantize_cache(cache, bits=2, group=32, residual=40)
    assert (r.tokens, r.quantized_tokens) == (96, 32)
    for (k, v), layer in zip(pairs, cache.layers, strict=True):
        assert torch.equal(layer.keys[:, :, 32:], k[:, :, 32:]) and torch.equal(layer.values[:, :, 32:], v[:, :, 32:])
        assert not torch.equal(layer.keys[:, :, :32], k[:, :, :32])
    # 32 tokens at 4 bits a value (2 + 2 for scale/minimum per 32), 64 at 16: 16 / ((32 * 4 + 64 * 16) / 96)
    assert r.ratio_vs_16bit == pytest.approx(16 * 96 / (32 * 4 + 64 * 16))


def test_bits_16_is_bfloat16_rounding():
    pairs = _kv(tokens=32)
    cache = _Cache(copy.deepcopy(pairs))
    r = kv.fake_quantize_cache(cache, bits=16)
    assert torch.equal(cache.layers[1].values, pairs[1][1].to(torch.bfloat16).float())
    assert r.stored_bytes == r.bytes_16bit and r.key_rel_error < 4e-3


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="not a multiple of group=32"):
        kv.quantize_keys(torch.randn(1, 1, 40, 64), 4, 32)
    with pytest.raises(ValueError, match="bits"):
        kv.quantize_values(torch.randn(1, 1, 4, 64), 1, 32)
    with pytest.raises(ValueError, match="batch, heads, tokens, head_dim"):
        kv.quantize_keys(torch.randn(64, 64), 4, 32)
    with pytest.raises(ValueError, match="empty"):
        kv.fake_quantize_cache(_Cache([(torch.empty(1, 1, 0, 64), torch.empty(1, 1, 0, 64))]))
    with pytest.raises(ValueError, match="residual"):
        kv.fake_quantize_cache(_Cache(_kv()), residual=-1)


def test_cache_nbytes_counts_a_shared_storage_once():
    t = torch.zeros(1, 1, 8, 4)
    cache = _Cache([(t, t[:, :, :4])])
    assert kv.cache_nbytes(cache) == t.nbytes
    cache.layers[0].extra = {"scale": torch.zeros(3), "meta": (torch.zeros(2, dtype=torch.uint8), "text")}
    assert kv.cache_nbytes(cache) == t.nbytes + 12 + 2


def _dynamic(pairs):
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(pairs):
        cache.update(k, v, i)
    return cache


def _config(layers=2):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def test_a_transformers_dynamic_cache_is_read_and_written():
    pairs = _kv(tokens=64)
    cache = _dynamic(copy.deepcopy(pairs))
    assert [(tuple(k.shape), tuple(v.shape)) for k, v in kv.cache_layers(cache)] == [((1, 2, 64, 64),) * 2] * 2
    assert kv.cache_nbytes(cache) == 2 * 2 * 2 * 64 * 64 * 4
    r = kv.fake_quantize_cache(cache, bits=4, group=32)
    assert r.held_bytes == 2 * 2 * 2 * 64 * 64 * 4 and r.bytes_16bit == r.held_bytes // 2
    assert 0 < r.key_rel_error < 0.2 and not torch.equal(kv.cache_layers(cache)[0][0], pairs[0][0])


@pytest.mark.skipif(not kv.backends()["fp8"], reason="this transformers has no fp8 KV-cache backend")
def test_transformers_fp8_cache_holds_one_byte_a_value_plus_two_scales_a_layer():
    pairs = _kv(tokens=64)
    q = kv.quantized_cache(_config(), _dynamic(pairs), "fp8")
    assert kv.cache_nbytes(q) == 2 * 2 * (2 * 64 * 64) + 2 * 2 * 4


@pytest.mark.skipif(not kv.backends()["hqq"], reason="hqq is not installed (pip install hqq)")
def test_transformers_hqq_cache_is_smaller_than_a_16bit_cache():
    pairs = _kv(tokens=64, dtype=torch.bfloat16)
    q = kv.quantized_cache(_config(), _dynamic(pairs), "hqq", nbits=4, q_group_size=64, residual_length=0)
    sixteen = kv.cache_nbytes(_dynamic(pairs))
    assert 2.5 < sixteen / kv.cache_nbytes(q) < 4


def test_an_unavailable_backend_names_the_package(monkeypatch):
    monkeypatch.setattr(kv, "backends", lambda: {"hqq": False, "quanto": False, "fp8": True})
    with pytest.raises(ImportError, match="pip install optimum-quanto"):
        kv.quantized_cache(_config(), _dynamic(_kv()), "quanto")
    with pytest.raises(ValueError, match="backend must be one of"):
        kv.quantized_cache(_config(), _dynamic(_kv()), "int3")


def test_continuation_after_a_prefill_scores_as_one_forward_pass():
    """prefill + continuation_nll on a cache == the plain cross-entropy of one forward over all the tokens."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config()).eval()
    ids = torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(4))
    cache, last = kv.prefill(model, ids[:, :32])
    before = [k.clone() for k, _ in kv.cache_layers(cache)]
    nll = kv.continuation_nll(model, cache, ids[:, 32:])
    with torch.inference_mode():
        logits = model(ids).logits[0]
    ref = torch.nn.functional.cross_entropy(logits[32:-1], ids[0, 33:])
    assert nll == pytest.approx(float(ref), abs=1e-5)
    torch.testing.assert_close(last, logits[31:32], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(b, k) for b, (k, _) in zip(before, kv.cache_layers(cache), strict=True))   # copied
    quantized = copy.deepcopy(cache)
    kv.fake_quantize_cache(quantized, bits=2, group=16)             # head_dim 16 here
    assert kv.continuation_nll(model, quantized, ids[:, 32:]) != pytest.approx(nll, abs=1e-6)
    with pytest.raises(ValueError, match="n >= 2"):
        kv.continuation_nll(model, cache, ids[:, 32:33])
