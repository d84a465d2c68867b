"""What to check when a CUDA GPU is at hand: every method of ``qlearn.methods`` on CUDA tensors.

``check_cuda(device)``: each of ``LAYER_METHODS`` on a seeded (576, 1536) weight with 2048 calibration rows, once
on the CPU and once on ``device``; every tensor of the GPU's record must be on the GPU (lesson 11 failed there:
GPTQ made its scales on the CPU), and its output error must match the CPU's within float-order noise.
"""

from __future__ import annotations

import torch

from .layer import LAYER_METHODS, quantize_layer
from .rtn import output_error

__all__ = ["check_cuda"]


def check_cuda(device="cuda") -> dict:
    """{method: {"on", "codes_equal", "out_err_vs_cpu"}, "ok", "failures"}: codes_equal is the share of codes
    equal to the CPU's, out_err_vs_cpu the GPU record's output error over the CPU record's (1.0: the same)."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(4)
    w, x = torch.randn(576, 1536, generator=gen) * 0.02, torch.randn(2048, 1536, generator=gen)
    out = {}
    for method in LAYER_METHODS:
        try:
            cpu, _ = quantize_layer(method, w, x, 128)
            gpu, moved = quantize_layer(method, w.to(dev), x.to(dev), 128)
        except Exception as err:                                    # noqa: BLE001 - report it, run the rest
            out[method] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            continue
        on = {gpu.codes.device.type, gpu.dequantize().device.type, *([moved.device.type] if moved is not None else [])}
        ratio = output_error(x, w, gpu.dequantize().cpu()) / output_error(x, w, cpu.dequantize())
        out[method] = {"on": sorted(on), "codes_equal": float((gpu.codes.cpu() == cpu.codes).float().mean()),
                       "out_err_vs_cpu": ratio, "ok": on == {dev.type} and 0.8 < ratio < 1.25}
    out["failures"] = [m for m in LAYER_METHODS if not out[m]["ok"]]
    out["ok"] = not out["failures"]
    return out
