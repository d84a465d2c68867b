"""What to check when a CUDA GPU is at hand: the device-dependent paths of ``kernels`` and ``methods``, run on it.

``check_cuda(device)`` returns one JSON-able dict (``qlearn.methods.gpucheck.check_cuda`` does the same for
the quantization methods); ``ok`` is False if any check failed, and ``failures`` names
them (each check is run on its own, so one failure does not hide the others). It needs no model file:

- fused int4 (the kernel ``int4_path`` picks) against the same codes decoded and multiplied in float32, for
  the embedded model's layer shapes, every group size, batches 1, 4 and 64; int8 the same way;
- bitsandbytes' path (``Bnb4bitLinear``, what a GPU below compute capability 8.0 gets), forced;
- ``decode_probe`` / ``time_split`` on a two-layer token model: no layer decodes at one token (fused int4 and
  bitsandbytes' fused gemm_4bit), the bitsandbytes layer does at 2048 tokens (above 1536 rows
  bitsandbytes 0.50 always dequantizes first, ``backends/cuda/ops.py``);
- copy bandwidth, matmul flop/s and per-layer times of every path, synchronized.
"""

from __future__ import annotations

import torch
from torch import nn

from .bandwidth import copy_bandwidth, matmul_flops
from .device import describe_int4_path, int4_path
from .fused import BLOCKSIZES_INT4, DequantInt4Linear, FusedInt4Linear, FusedInt8Linear, quantize_int4
from .layerbench import build_paths, default_paths, time_layer_paths
from .timesplit import time_split

__all__ = ["SHAPES", "check_cuda"]

SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576))   # embedded SmolLM2's (N, K)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref|: 0.004 for bf16 outputs of a float32 product."""
    return float((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _int4(dev) -> dict:
    if int4_path(dev) == "bitsandbytes":
        return {"path": "bitsandbytes", "ok": True, "skipped": "torch's int4 kernel needs compute capability 8.0"}
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for n, k in SHAPES:
        w = (torch.randn(n, k, generator=gen) * 0.02).to(dev, torch.bfloat16)
        for g in BLOCKSIZES_INT4:
            q = quantize_int4(w, g, torch.bfloat16)
            fused, plain = FusedInt4Linear(q), DequantInt4Linear(q)
            for m in (1, 4, 64):
                x = torch.randn(m, k, generator=gen).to(dev, torch.bfloat16)
                ref = x.float() @ q.dequantize(torch.float32).T
                worst[f"{n}x{k} g{g} m{m}"] = max(_rel_err(fused(x), ref), _rel_err(plain(x), ref))
    return {"path": fused.path, "worst_rel_err": max(worst.values()), "cases": len(worst),
            "ok": max(worst.values()) < 2e-2}


def _int8(dev) -> dict:
    w = (torch.randn(1536, 576, generator=torch.Generator().manual_seed(1)) * 0.02).to(dev, torch.bfloat16)
    layer, x = FusedInt8Linear(w), torch.randn(4, 576, device=dev, dtype=torch.bfloat16)
    err = _rel_err(layer(x), x.float() @ layer.dequantize(torch.float32).T)
    return {"rel_err": err, "ok": err < 2e-2}


def _bnb(dev) -> dict:
    from .bnb4bit import Bnb4bitLinear

    w = (torch.randn(1536, 576, generator=torch.Generator().manual_seed(2)) * 0.02).to(dev, torch.bfloat16)
    layer = Bnb4bitLinear(w, blocksize=64)
    errs = {m: _rel_err(layer(x), x.float() @ layer.dequantize(torch.float32).T)
            for m in (1, 4, 64) for x in [torch.randn(m, 576, device=dev, dtype=torch.bfloat16)]}
    return {"rel_err": errs, "ok": max(errs.values()) < 2e-2}


class _TokenModel(nn.Module):
    """Token ids -> embedding -> a fused int4 q_proj -> a bitsandbytes up_proj: enough for ``time_split``."""

    def __init__(self, dev):
        super().__init__()
        from .bnb4bit import Bnb4bitLinear

        gen = torch.Generator().manual_seed(3)
        self.config = type("Config", (), {"vocab_size": 256})()
        self.embed_tokens = nn.Embedding(256, 576).to(dev, torch.bfloat16)
        w = (torch.randn(576, 576, generator=gen) * 0.02).to(dev, torch.bfloat16)
        self.q_proj = (Bnb4bitLinear(w) if int4_path(dev) == "bitsandbytes" else
                       FusedInt4Linear(quantize_int4(w, 64, torch.bfloat16)))
        self.up_proj = Bnb4bitLinear((torch.randn(1536, 576, generator=gen) * 0.02).to(dev, torch.bfloat16))

    @property
    def device(self):
        return self.embed_tokens.weight.device

    def get_input_embeddings(self):
        return self.embed_tokens

    def named_modules(self, *args, **kwargs):
        yield "model.layers.0.self_attn.q_proj", self.q_proj
        yield "model.layers.0.mlp.up_proj", self.up_proj

    def forward(self, ids, use_cache=False):
        return self.up_proj(self.q_proj(self.embed_tokens(ids)))


def _split(dev) -> dict:
    model = _TokenModel(dev)
    one, long = time_split(model, 1, 1, repeats=3), time_split(model, 1, 2048, repeats=3)
    out = {"decoded_one_token": one.decoded_layers, "decoded_2048_tokens": long.decoded_layers,
           "gap_one_token": one.gap, "device": one.device}
    bnb = tuple(n for n, m in model.named_modules() if m.path == "bitsandbytes")   # above 1536 rows: dequantize
    out["ok"] = one.decoded_layers == () and long.decoded_layers == bnb and one.device.startswith("cuda")
    return out


def _speed(dev) -> dict:
    gen = torch.Generator().manual_seed(5)
    weights = [(torch.randn(n, k, generator=gen) * 0.02).to(dev, torch.bfloat16) for n, k in SHAPES[:4] * 4]
    fns = build_paths(weights)
    times = {b: time_layer_paths(fns, [w.shape[1] for w in weights], batch=b, rounds=3, device=dev).seconds
             for b in (1, 16)}
    return {"copy_bandwidth_TBps": copy_bandwidth(device=dev) / 1e12,
            "bf16_matmul_TFLOPs": matmul_flops(dtype=torch.bfloat16, device=dev) / 1e12,
            "ms_per_layer": {b: {p: 1e3 * s for p, s in t.items()} for b, t in times.items()},
            "paths": default_paths(dev), "ok": True}


def check_cuda(device="cuda") -> dict:
    """Run every check on ``device``; {"device", "capability", "int4_path", <check>: {...}, "ok", "failures"}."""
    dev = torch.device(device)
    capability = torch.cuda.get_device_capability(dev)
    report = {"device": torch.cuda.get_device_name(dev), "capability": capability, "torch": torch.__version__,
              "int4_path": int4_path(dev), "int4_kernel": describe_int4_path(int4_path(dev))}
    for name, check in (("int4", _int4), ("int8", _int8), ("bitsandbytes", _bnb), ("time_split", _split),
                        ("speed", _speed)):
        try:
            report[name] = check(dev)
        except Exception as err:                                    # noqa: BLE001 - report it, run the rest
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    report["failures"] = [k for k, v in report.items() if isinstance(v, dict) and not v.get("ok", True)]
    report["ok"] = not report["failures"]
    return report
