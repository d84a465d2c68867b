"""qlearn.kernels: the fused int4/int8 CPU Linear against dequantize-then-matmul of the same weights, the
kernel's conventions, the time split on a small Llama, the bandwidth floors, the speed figures and explorer."""

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qlearn.kernels import (
    DequantInt4Linear,
    FusedInt4Linear,
    FusedInt8Linear,
    copy_bandwidth,
    dequantize_replay,
    floors,
    hook_overhead,
    layer_type,
    quantize_int4,
    release_checkpoint,
    swap_linears,
    time_split,
)

ART = Path(__file__).parent / "_artifacts"


def _seeded(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _bf16_bound(x, w):
    """What bf16 rounding of inputs to the sum may move a dot product by: 2**-7 * sum |x| |w| per output."""
    return 2.0**-7 * (x.float().abs() @ w.float().abs().t()) + 1e-6


@pytest.mark.parametrize("groupsize", [32, 64, 128])
@pytest.mark.parametrize("shape", [(1536, 576), (576, 1536), (192, 576)])
def test_fused_int4_matches_dequantize_then_matmul_within_bf16_rounding(groupsize, shape):
    w = _seeded(*shape, seed=1, dtype=torch.bfloat16) * 0.05
    q = quantize_int4(w, groupsize)
    x = _seeded(3, shape[1], seed=2, dtype=torch.bfloat16)
    fused = FusedInt4Linear(q)(x)
    exact = F.linear(x.float(), q.dequantize(torch.float32))          # the same int4 weights, float32 sums
    assert fused.dtype == torch.bfloat16 and fused.shape == (3, shape[0])
    assert bool(((fused.float() - exact).abs() <= _bf16_bound(x, q.dequantize(torch.float32))).all())
    reference = DequantInt4Linear(q)(x)                                # dequantize-then-matmul in bf16
    assert bool(((fused.float() - reference.float()).abs() <= 2 * _bf16_bound(x, w)).all())


def test_fused_int4_in_float32_is_the_convention_exactly():
    """In float32 nothing rounds but the sums: w = (q - 8) * scale + zero, groups along the input dimension."""
    w = _seeded(64, 256, seed=3)
    q = quantize_int4(w, 64, torch.float32)
    x = _seeded(5, 256, seed=4)
    torch.testing.assert_close(FusedInt4Linear(q)(x), x @ q.dequantize().t(), rtol=1e-5, atol=1e-5)


def test_quantize_int4_worked_numbers_and_error_bound():
    row = torch.tensor([-0.3, 0.45, 0.0, 0.15] * 8)                  # one group of 32, range 0.75 -> scale 0.05
    q = quantize_int4(row.repeat(16, 1), 32, torch.float32)
    assert torch.allclose(q.scale, torch.full((16, 1), 0.05)) and torch.allclose(q.zero, torch.full((16, 1), 0.1))
    assert q.codes[0, :4].tolist() == [0, 15, 6, 9]
    w = _seeded(32, 96, seed=5)
    q = quantize_int4(w, 64, torch.float32)                           # 96 = one full group + a padded half group
    assert q.padded_codes.shape == (32, 128) and q.codes.shape == (32, 96) and int(q.padded_codes.max()) <= 15
    step = q.scale.repeat_interleave(64, 1)[:, :96]
    assert bool(((q.dequantize() - w).abs() <= step / 2 * (1 + 1e-5)).all())
    assert q.bits_per_param == pytest.approx(8 * (32 * 64 + 2 * 32 * 2 * 4) / (32 * 96))


def test_q4_1_style_weights_come_back_almost_exactly_at_group_32_only():
    """Weights made like GGUF Q4_1 (codes * d + m in groups of 32): asymmetric int4 at group 32 finds them."""
    codes = torch.randint(0, 16, (64, 256), generator=torch.Generator().manual_seed(6)).float()
    codes[:, ::32], codes[:, 1::32] = 0, 15                           # every group uses both end codes
    d, m = _seeded(64, 8, seed=7).abs() * 0.01 + 0.001, _seeded(64, 8, seed=8) * 0.05
    w = (codes.view(64, 8, 32) * d[..., None] + m[..., None]).view(64, 256)
    err32 = (quantize_int4(w, 32, torch.float32).dequantize() - w).abs().max()
    err64 = (quantize_int4(w, 64, torch.float32).dequantize() - w).abs().max()
    assert float(err32) < 1e-6 < float(err64)


def test_fused_int8_matches_its_dequantize():
    lin = torch.nn.Linear(576, 192, bias=True).to(torch.bfloat16)
    f8 = FusedInt8Linear.from_linear(lin)
    x = _seeded(2, 576, seed=9, dtype=torch.bfloat16)
    exact = F.linear(x.float(), f8.dequantize(torch.float32), lin.bias.float())
    assert bool(((f8(x).float() - exact).abs() <= _bf16_bound(x, f8.dequantize(torch.float32)) + 0.01).all())
    assert f8.weight_int8.dtype == torch.int8 and int(f8.weight_int8.abs().max()) == 127


@pytest.mark.parametrize("call, error", [
    (lambda: quantize_int4(torch.randn(16, 64), 48), ValueError),
    (lambda: quantize_int4(torch.randn(64), 32), TypeError),
    (lambda: quantize_int4(torch.ones(16, 64, dtype=torch.int32), 32), TypeError),
    (lambda: FusedInt4Linear(quantize_int4(torch.randn(24, 64), 32)), ValueError),
    (lambda: swap_linears(torch.nn.Linear(64, 32), "int3"), ValueError),
    (lambda: copy_bandwidth(10), ValueError),
    (lambda: floors(0, 0, 1, 1e9, 1e9), ValueError),
])
def test_bad_inputs_raise(call, error):
    with pytest.raises(error):
        call()


def test_layer_types_and_floors():
    assert [layer_type(n) for n in ("model.layers.0.self_attn.q_proj", "model.layers.9.mlp.up_proj", "lm_head",
                                    "model.embed_tokens")] == ["attention", "mlp", "lm_head", None]
    f = floors(100_000_000, 50_000_000, 50_000_000, 10e9, 100e9)
    assert f.memory_s() == pytest.approx(0.015) and f.memory_s(False) == pytest.approx(0.01)
    assert f.floor_s(1) == pytest.approx(0.015) and f.floor_s(64) == pytest.approx(0.064)


def test_copy_bandwidth_agrees_with_a_copy_timed_here():
    """copy_bandwidth of 8 MiB against this test's own clock on a copy of the same size, in the same run (rounds
    interleaved, fastest of each): both count read + write, 2 x 8 MiB a copy. Counting one side only, a wrong size
    or the wrong number of copies puts the ratio at 0.5 or 2; 15 rounds kept it within 0.96-1.10 here."""
    nbytes = 8 << 20
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ours, theirs = [], []
    for _ in range(15):
        start = time.perf_counter()
        dst.copy_(src)
        ours.append(time.perf_counter() - start)
        theirs.append(copy_bandwidth(nbytes, repeats=1))
    ratio = max(theirs) / (2 * nbytes / min(ours))
    assert 1 / 1.5 < ratio < 1.5, ratio


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()   # float32: bf16 matmuls are slow on CPUs without AVX512-BF16


def test_swap_keeps_the_tied_head_and_matches_the_reference(tiny_llama):
    import copy

    fused, ref = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    assert swap_linears(fused, "int4", blocksize=32) == 21 == swap_linears(ref, "int4-dequant", blocksize=32)
    assert type(fused.lm_head) is torch.nn.Linear and isinstance(fused.model.layers[0].mlp.up_proj, FusedInt4Linear)
    ids = torch.randint(0, 2048, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = fused(ids).logits.float(), ref(ids).logits.float()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)          # float32: only the order of the sums differs
    assert swap_linears(ref, "int4") == 21                            # the reference's own codes, now fused
    with torch.inference_mode():
        assert torch.equal(ref(ids).logits, fused(ids).logits)


def _slowed(forward, seconds):
    """``forward`` that first sleeps ``seconds``: a known cost put on one module for the time split to find."""
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)
    return slow


@pytest.mark.parametrize("kind", ["fp32", "int4", "int4-dequant"])
def test_time_split_parts_add_up_to_the_forward(tiny_llama, kind):
    import copy

    model = copy.deepcopy(tiny_llama)
    if kind != "fp32":
        swap_linears(model, kind, blocksize=64)
    norm, down = model.model.norm, model.model.layers[0].mlp.down_proj
    norm.forward, down.forward = _slowed(norm.forward, 0.03), _slowed(down.forward, 0.02)   # known time, known place
    try:
        split = time_split(model, batch=1, seq=64, repeats=7, label=kind)
    finally:
        del norm.forward, down.forward
    totals = split.totals()
    assert split.parts_s == pytest.approx(split.hooked_s)
    # the 30 ms slept in the final norm (not a linear layer) is "other", the 20 ms slept in one mlp layer is mlp
    # matmul, and both are in the forward timed without clocks. A layer the clocks miss moves its 20 ms to "other"
    # (mlp < 0.02); a layer clocked twice takes 20 ms more out of "other" (other = clocked forward - layers < 0.03,
    # the rest of "other" was 4-11 ms here); a forward timed around the wrong call misses the 50 ms.
    assert split.parts[("other", "other")] >= 0.03 and split.parts[("mlp", "matmul")] >= 0.02, split.parts
    assert split.forward_s >= 0.05 and split.hooked_s >= 0.05
    assert (totals["dequantize"] > 0) == (kind == "int4-dequant")
    weights = 3 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 256 * 768)      # 3 blocks: q, o; k, v; gate, up, down
    assert split.decoded_bytes == (2 * 4 * weights if kind == "int4-dequant" else 0)   # fp32, written + read


def test_bitsandbytes_replay_is_what_the_layer_multiplies():
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    layer = bnb.nn.Linear4bit(576, 192, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(_seeded(192, 576, seed=10) * 0.05, requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu").eval()
    x = _seeded(1, 576, seed=11, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = layer(x)
        replay = dequantize_replay(layer, torch.bfloat16)
        if bnbf.has_avx512bf16():    # repacked on the first forward: fused, nothing to replay
            assert replay is None
        else:
            assert torch.equal(y, F.linear(x, replay()))


def test_figures_and_explorer(tiny_llama):
    from qlearn.plots import _base
    from qlearn.plots.kernels import crossover, roofline, time_split_bars
    from qlearn.widgets.kernels import speed_explorer

    split = time_split(tiny_llama, batch=1, seq=1, repeats=1, label="fp32")
    splits = {("fp32", 1): split, ("fp32", 4): split, ("int4", 1): split}
    pts = [dict(label=m, batch=b, measured_s=s.forward_s * b ** 0.5, memory_s=s.forward_s / 2,
                compute_s=s.forward_s / 10 * b) for (m, b), s in splits.items()]
    fig, axes = _base.new_figure(3, figsize=(14, 3.4))
    assert len(time_split_bars([split], ax=axes[0])) >= 2 and len(roofline(pts, ax=axes[1])) == 4
    assert len(crossover(pts, ax=axes[2])) == 2
    ART.mkdir(exist_ok=True)
    fig.savefig(ART / "kernels_figures.png")
    w = speed_explorer(splits, pts)
    w.update(mode="int4", batch=1)
    assert w.shown is split and w.error is None and w.view.selected == ("int4", 1)
    w.update(batch=4)                          # int4 was not measured at batch 4: said in the message
    assert "no time split measured" in (w.error or "")
    (ART / "speed_explorer.png").write_bytes(w.update(mode="fp32", batch=4).png())


def test_time_split_clocks_every_layer_and_leaves_the_model_as_it_was(tiny_llama):
    """The clock wrappers go on each linear layer for the clocked forwards only: afterwards no layer has an
    instance ``forward`` (or keeps its own, e.g. one accelerate put there), and the logits are unchanged."""
    ids = torch.randint(0, 2048, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        before = tiny_llama(ids).logits
    head = tiny_llama.lm_head
    own = head.forward                                    # an instance forward, as accelerate's hooks set one
    head.forward = own
    try:
        split = time_split(tiny_llama, batch=1, seq=8, repeats=1, label="fp32")
        assert head.__dict__["forward"] is own
    finally:
        del head.forward
    assert not [n for n, m in tiny_llama.named_modules() if "forward" in m.__dict__]
    assert all(split.parts[(lt, "matmul")] > 0 for lt in ("attention", "mlp", "lm_head"))
    with torch.inference_mode():
        assert torch.equal(tiny_llama(ids).logits, before)


def test_hook_overhead_is_measured_for_both_ways():
    cost = hook_overhead(n_calls=200, repeats=2)
    assert set(cost) == {"hooks", "wrapper"} and all(0 <= v < 1e-3 for v in cost.values())


def test_quantize_and_pack_in_row_chunks_give_the_same_bytes(monkeypatch):
    """quantize_int4 and the int4 packing run _ROWS rows at a time (memory); torch's packed layout is blocked by
    rows, so slices that start at multiples of 64 rows concatenate to the very bytes of a whole-matrix pack."""
    import qlearn.kernels.fused as fused_mod

    w = _seeded(336, 128, seed=12, dtype=torch.bfloat16)             # 5 chunks of 64 rows and one of 16
    whole = quantize_int4(w, 32)
    packed = FusedInt4Linear(whole).packed
    monkeypatch.setattr(fused_mod, "_ROWS", 64)
    chunked = quantize_int4(w, 32)
    assert all(torch.equal(getattr(whole, f), getattr(chunked, f)) for f in ("codes", "scale", "zero"))
    assert torch.equal(FusedInt4Linear(chunked).packed, packed)
    assert torch.equal(packed, torch.ops.aten._convert_weight_to_int4pack_for_cpu(whole.codes.int(), 1))


def test_release_checkpoint_copies_every_parameter_once_and_keeps_the_tie(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama)
    swap_linears(model, "int4", blocksize=64)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    copied = release_checkpoint(model)
    assert copied == sum(p.numel() * p.element_size() for p in model.parameters())   # embedding + norms, once
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, p in model.named_parameters():
        assert p.data_ptr() != before[name][0] and torch.equal(p, before[name][1])
