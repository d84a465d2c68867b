"""The device logic of qlearn.kernels and qlearn.methods, checked on a machine without a GPU.

- which fused 4-bit kernel a device + compute capability gets (a pure function);
- every tensor the methods and the int4 layers make lands on the input's device: run under
  ``with torch.device("meta")``, a factory call that forgets ``device=`` makes a meta tensor, and the first
  op that mixes it with the CPU input fails (the GPTQ of qlearn 0.2 failed here, as it did on CUDA);
- every timing on a CUDA device waits for it (``torch.cuda.synchronize`` replaced by a recorder);
- the time split replays a decode on CUDA only for the layers that decoded (allocator counter faked).
"""

import dataclasses
import doctest
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qlearn import kernels as qk
from qlearn.kernels import bandwidth, device, layerbench, timesplit
from qlearn.kernels.fused import DequantInt4Linear, FusedInt4Linear, FusedInt8Linear, _inner_k_tiles, _pack_int4_cuda
from qlearn.methods import LAYER_METHODS, quantize_layer

# --- which kernel -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dev, capability, path", [
    ("cpu", None, "torch-cpu"),
    (torch.device("cpu"), (7, 5), "torch-cpu"),          # a capability is a GPU's: ignored on a CPU
    ("cuda", (8, 0), "torch-cuda"),                      # A100: tinygemm's minimum
    ("cuda:1", (8, 6), "torch-cuda"),
    ("cuda", (9, 0), "torch-cuda"),                      # H100 / H200
    ("cuda", (12, 0), "torch-cuda"),
    ("cuda", (7, 5), "bitsandbytes"),                    # T4 (Colab)
    ("cuda", (7, 0), "bitsandbytes"),                    # V100
])
def test_int4_path_from_device_and_capability(dev, capability, path):
    assert qk.int4_path(dev, capability) == path


def test_int4_path_reads_the_capability_of_that_gpu(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(str(d)) or (7, 5))
    assert qk.int4_path("cuda:1") == "bitsandbytes"
    assert asked == ["cuda:1"]


@pytest.mark.parametrize("dev, capability, words", [
    ("meta", None, "CPU or CUDA"), ("not a device", None, "device must be"), (None, None, "device must be"),
    ("cuda", "8.0", "capability"), ("cuda", (8,), "capability"), ("cuda", (8.0, 0), "capability"),
])
def test_int4_path_bad_arguments_name_them(dev, capability, words):
    with pytest.raises(ValueError, match=words):
        qk.int4_path(dev, capability)


def test_every_path_has_its_sentence():
    assert {p: qk.describe_int4_path(p).split()[0] for p in qk.INT4_PATHS} == {
        "torch-cpu": "torch's", "torch-cuda": "torch's", "bitsandbytes": "bitsandbytes'"}
    assert "8.0" in qk.describe_int4_path("torch-cuda")
    with pytest.raises(ValueError, match="path must be one of"):
        qk.describe_int4_path("cuda")


@pytest.mark.parametrize("module", ["device", "fused", "bandwidth", "layerbench", "timesplit", "bnb4bit"])
def test_kernels_doctests(module):
    import importlib

    result = doctest.testmod(importlib.import_module(f"qlearn.kernels.{module}"))
    assert result.failed == 0 and result.attempted > 0


def test_fused_int4_layer_takes_the_path_of_its_codes_and_refuses_the_others():
    q = qk.quantize_int4(torch.randn(32, 64), blocksize=32)
    assert FusedInt4Linear(q).path == "torch-cpu"
    with pytest.raises(ValueError, match="'bitsandbytes'"):
        FusedInt4Linear(q, path="bitsandbytes")
    with pytest.raises(ValueError, match="packed for torch-cpu"):     # the CPU layout on another device
        FusedInt4Linear(q).to("meta")(torch.randn(1, 64, device="meta"))
    with pytest.raises(ValueError, match="multiple of 8 .*torch-cuda"):
        FusedInt4Linear(qk.quantize_int4(torch.randn(12, 64), 32), path="torch-cuda")


@pytest.mark.parametrize("k, groupsize, tiles", [(576, 64, 4), (576, 128, 8), (576, 32, 4), (1536, 64, 8),
                                                  (96, 32, 2)])
def test_cuda_packing_shape_on_meta(k, groupsize, tiles):
    """torch's CUDA int4 packing, run on the meta device: (N/8, Kp/(16 t), 32, t/2) int32, Kp padded to the group."""
    kp = -(-k // groupsize) * groupsize
    assert _inner_k_tiles(kp) == tiles
    packed = _pack_int4_cuda(torch.zeros(48, kp, dtype=torch.uint8, device="meta"))
    assert packed.shape == (6, kp // (16 * tiles), 32, tiles // 2) and packed.dtype == torch.int32


def test_swap_linears_on_the_bitsandbytes_path_uses_its_nf4_layer():
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    x = torch.randn(2, 64)
    first = net[0].weight.detach().clone()
    assert qk.swap_linears(net, "int4", blocksize=32, path="bitsandbytes") == 2
    assert [type(m).__name__ for m in (net[0], net[2])] == ["Bnb4bitLinear", "Bnb4bitLinear"]
    packed, state = bnbf.quantize_4bit(first, blocksize=32, quant_type="nf4")
    assert torch.equal(net[0].packed, packed)                          # NF4 blocks of groupsize, bitsandbytes' bytes
    expected = nn.functional.linear(x, bnbf.dequantize_4bit(packed, state), net[0].bias)
    torch.testing.assert_close(net[0](x), expected)


# --- tensors on the input's device ------------------------------------------------------------------------

@pytest.mark.parametrize("method", LAYER_METHODS)
def test_methods_make_every_tensor_on_the_inputs_device(method):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(32, 256, generator=g) * 0.02, torch.randn(300, 256, generator=g)
    expected, _ = quantize_layer(method, w, x, 64)
    with torch.device("meta"):                   # the default device of factory calls, not of w and x
        rec, moved = quantize_layer(method, w, x, 64)
    assert rec.codes.device.type == "cpu" and rec.dequantize().device.type == "cpu"
    assert torch.equal(rec.dequantize(), expected.dequantize())
    if moved is not None:
        assert moved.device.type == "cpu"


def test_gptq_moves_the_hessian_to_the_weight():
    from qlearn.methods import gptq, hessian, rtn

    w = torch.randn(16, 64)
    with torch.device("meta"):
        rec = gptq(w, hessian(torch.randn(128, 64, device="cpu")), blocksize=32, act_order=True)
    assert rec.scale.device.type == "cpu"
    assert torch.equal(gptq(w, torch.eye(64), blocksize=32).codes, rtn(w, blocksize=32).codes)


@pytest.mark.parametrize("make", [
    lambda w: FusedInt4Linear(qk.quantize_int4(w, 64)),
    lambda w: DequantInt4Linear(qk.quantize_int4(w, 64)),
    lambda w: FusedInt8Linear(w),
])
def test_int4_and_int8_layers_make_every_tensor_on_the_inputs_device(make):
    w, x = torch.randn(32, 192), torch.randn(3, 192)
    expected = make(w)(x)
    with torch.device("meta"):
        layer = make(w)
        y = layer(x)
    assert {b.device.type for b in layer.buffers()} == {"cpu"}
    assert torch.equal(y, expected)


def test_apply_method_keeps_the_models_device():
    transformers = pytest.importorskip("transformers")
    from qlearn.methods import apply as qa

    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 32))
    for method in ("gptq", "awq", "hqq"):
        with torch.device("meta"):
            fq = qa.apply_method(model, method, 32, calib_ids=ids)
        assert {p.device.type for p in model.parameters()} == {"cpu"}, method
        assert sum(n.startswith("model.layers.") for n in fq.nbytes) == 14, method   # 2 layers x 7 linears
        fq.restore()


# --- clocks that wait for the GPU -------------------------------------------------------------------------

@pytest.fixture
def events(monkeypatch):
    """torch.cuda.synchronize replaced by a recorder: the list of events, in order."""
    log = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: log.append(("sync", str(d))))
    return log


def test_elapsed_waits_for_a_cuda_device_before_both_clock_reads(events):
    device.elapsed(lambda: events.append(("work", None)), "cuda:0")
    assert events == [("sync", "cuda:0"), ("work", None), ("sync", "cuda:0")]
    events.clear()
    device.elapsed(lambda: events.append(("work", None)), "cpu")
    assert events == [("work", None)]                            # a CPU op has finished when it returns


def test_layer_timings_wait_for_the_gpu_every_round(events, monkeypatch):
    monkeypatch.setattr(layerbench, "_on", lambda x, d: x)      # inputs stay on the CPU; the clock thinks cuda
    fns = {"a": [lambda x: events.append(("work", "a"))] * 2, "b": [lambda x: events.append(("work", "b"))] * 2}
    t = layerbench.time_layer_paths(fns, [8, 8], rounds=2, device="cuda")
    assert sorted(t.seconds) == ["a", "b"]
    kinds = [k for k, _ in events]
    assert kinds == ["sync", "work", "work", "sync"] * 2 * 3     # 2 paths x (warm-up + 2 rounds)
    events.clear()
    layerbench.time_layer_paths(fns, [8, 8], rounds=1)           # default: CPU, no waiting
    assert ("sync", "cuda") not in events and len(events) == 8


def test_bandwidth_and_flops_are_measured_on_the_device_asked(monkeypatch):
    seen = []

    def fake_elapsed(fn, dev):
        fn()
        seen.append(torch.device(dev).type)
        return 1.0

    monkeypatch.setattr(bandwidth, "elapsed", fake_elapsed)
    assert bandwidth.copy_bandwidth(8192, repeats=2) == 2 * 8192          # CPU: one copy a timing
    assert bandwidth.copy_bandwidth(8192, repeats=2, device="meta") == 20 * 2 * 8192   # a device: 20 a timing
    assert bandwidth.matmul_flops(repeats=1, device="meta") == 2 * 4096**3  # a GPU-sized matmul off the CPU
    assert bandwidth.matmul_flops(repeats=1) == 2 * 768**3
    assert seen == ["cpu"] * 2 + ["meta"] * 2 + ["meta"] * 2 + ["cpu"] * 2


# --- the time split on CUDA: replay only what ran ---------------------------------------------------------

class _Allocator:
    """A stand-in for the CUDA caching allocator's running count of bytes allocated."""

    def __init__(self):
        self.total = 0

    def stats(self, d=None):
        return {"allocated_bytes.all.allocated": self.total}


class _Probed(DequantInt4Linear):
    """DequantInt4Linear that reports to the fake allocator: its decoded weight (if ``decodes``) and its output."""

    def __init__(self, weights, allocator, decodes):
        super().__init__(weights)
        self.allocator, self.decodes = allocator, decodes

    def forward(self, x):
        out = super().forward(x)
        if self.decodes:
            self.allocator.total += self.in_features * self.out_features * 2
        self.allocator.total += out.numel() * out.element_size()
        return out


class _TinyModel(nn.Module):
    """A model shaped like a transformers one for time_split: two layers, one attention and one mlp."""

    def __init__(self, allocator, on):
        super().__init__()
        self.emb = nn.Embedding(16, 64).to(torch.bfloat16)
        self.config = SimpleNamespace(vocab_size=16)
        q = qk.quantize_int4(torch.randn(64, 64), 32, torch.bfloat16)
        self.q_proj = _Probed(q, allocator, decodes=True)
        self.up_proj = _Probed(q, allocator, decodes=False)
        self.on = torch.device(on)

    @property
    def device(self):
        return self.on

    def get_input_embeddings(self):
        return self.emb

    def named_modules(self, *args, **kwargs):
        yield "model.layers.0.self_attn.q_proj", self.q_proj
        yield "model.layers.0.mlp.up_proj", self.up_proj

    def forward(self, ids, use_cache=False):
        h = self.emb(ids)
        return self.up_proj(self.q_proj(h))


def test_time_split_on_cuda_replays_only_the_layers_that_decoded(events, monkeypatch):
    allocator = _Allocator()
    monkeypatch.setattr(torch.cuda, "memory_stats", allocator.stats)
    monkeypatch.setattr(timesplit, "_inputs", lambda model, b, s: torch.zeros(b, s, dtype=torch.long))
    split = qk.time_split(_TinyModel(allocator, "cuda"), repeats=2)
    assert split.device == "cuda" and split.decoded_layers == ("model.layers.0.self_attn.q_proj",)
    assert split.parts[("attention", "dequantize")] > 0 and split.parts[("mlp", "dequantize")] == 0
    assert split.decoded_bytes == 2 * 64 * 64 * 2                       # one bf16 weight, written and read back
    assert len(events) > 20                                             # clocks waited for the GPU


def test_time_split_on_cpu_replays_every_decode_as_before(events):
    split = qk.time_split(_TinyModel(_Allocator(), "cpu"), repeats=2)
    assert split.device == "cpu" and len(split.decoded_layers) == 2
    assert split.parts[("mlp", "dequantize")] > 0 and events == []


def test_wrote_weight_separates_a_decode_from_an_output():
    n, k = 1536, 576
    assert device.wrote_weight(n * k * 2 + n * 2, n * 2, n * k, 2)          # fallback: weight + output
    assert not device.wrote_weight(2 * n * 2, n * 2, n * k, 2)             # fused: output (and a bias add)
    assert not device.wrote_weight(n * k * 2 - 1 + n * 2, n * 2, n * k, 2)


def test_gpu_check_compares_each_kernel_with_a_float32_reference(monkeypatch):
    """The checks scripts/gpu_check.py runs on CUDA, run here on the CPU kernels with small shapes."""
    from qlearn.kernels import gpucheck

    monkeypatch.setattr(gpucheck, "SHAPES", ((64, 128), (32, 96)))
    cpu = torch.device("cpu")
    r = gpucheck._int4(cpu)
    assert r["ok"] and r["path"] == "torch-cpu" and r["cases"] == 2 * 4 * 3 and 0 < r["worst_rel_err"] < 2e-2
    assert gpucheck._int8(cpu)["ok"]
    def shifted(q):
        return FusedInt4Linear(dataclasses.replace(q, zero=q.zero + q.scale))   # every weight one step off
    monkeypatch.setattr(gpucheck, "FusedInt4Linear", shifted)
    assert not gpucheck._int4(cpu)["ok"]


def test_methods_gpu_check_flags_a_record_off_the_device_or_off_the_cpus_error(monkeypatch):
    from qlearn.methods import gpucheck

    monkeypatch.setattr(gpucheck, "LAYER_METHODS", ("rtn", "gptq"))
    r = gpucheck.check_cuda("cpu")                                 # "the device" is the CPU: same numbers
    assert r["ok"] and r["gptq"]["codes_equal"] == 1.0 and r["gptq"]["out_err_vs_cpu"] == 1.0
    calls = []

    def second_call_differs(method, w, x, group_size):
        calls.append(method)
        return quantize_layer(method, w, x, 32 if len(calls) % 2 == 0 else group_size)

    monkeypatch.setattr(gpucheck, "quantize_layer", second_call_differs)
    assert gpucheck.check_cuda("cpu")["failures"] == ["rtn", "gptq"]
