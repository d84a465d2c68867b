"""One linear layer, several ways: the same weights multiplied by bf16 ``F.linear``, dequantize-then-matmul
(qlearn's int4 decode or bitsandbytes' ``dequantize_4bit``) and the fused int4 / int8 kernels, timed
side by side on every layer of a model in turn ("cycled"), so no layer's weights sit in the cache.

Rounds alternate the paths (path A over all layers, then B, ...), and each path keeps its fastest round:
a burst of load on a shared machine hits every path alike, and the fastest round is the least disturbed.
Inputs are made on the weights' device; on a CUDA device each round's clock is read after
``torch.cuda.synchronize``. "int4" is the fused layer of ``device.int4_path`` (torch's CPU or CUDA int4
kernel; on a GPU below compute capability 8.0 bitsandbytes' NF4 ``matmul_4bit``). On CUDA one more path,
"bnb-gemm_4bit", is what bitsandbytes' ``Linear4bit`` runs there with no gradient: ``bitsandbytes.matmul_4bit``
(the op ``bitsandbytes::gemm_4bit``, a fused kernel at batch <= 4). bitsandbytes is imported only for the
"bnb-" paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import bnb_interop
from .._threads import threads
from .device import int4_path, synchronize
from .fused import DequantInt4Linear, FusedInt4Linear, FusedInt8Linear, quantize_int4

__all__ = ["PATHS", "CUDA_PATHS", "default_paths", "LayerTimes", "build_paths", "time_layer_paths"]

PATHS = ("bf16", "int4-dequant", "bnb-nf4", "int4", "int8")
CUDA_PATHS = (*PATHS, "bnb-gemm_4bit")


def default_paths(device) -> tuple:
    """The paths worth timing on ``device``: ``PATHS``, and on CUDA also "bnb-gemm_4bit" (what a bitsandbytes
    4-bit layer runs there; on a CPU it is the "bnb-nf4" decode-then-matmul again).

    >>> default_paths("cpu") == PATHS, default_paths("cuda")[-1]
    (True, 'bnb-gemm_4bit')
    """
    return CUDA_PATHS if torch.device(device).type == "cuda" else PATHS


@dataclass(frozen=True)
class LayerTimes:
    """Seconds per layer (mean over the cycled layers, fastest round) for each path, at one batch size."""

    batch: int
    layers: int
    seconds: dict
    threads: int

    def ratio(self, slow: str, fast: str) -> float:
        """How many times faster ``fast`` is than ``slow`` (time of slow / time of fast)."""
        return self.seconds[slow] / self.seconds[fast]


def build_paths(weights: list[torch.Tensor], paths=None, int4_blocksize: int = 64, nf4_blocksize: int = 64) -> dict:
    """{path: [callable(x) per layer]} for (N, K) bf16 weights, on the weights' device. paths: default
    ``default_paths`` of that device. "int4" and "int4-dequant" share the same int4 codes (asymmetric,
    blocks of ``int4_blocksize``; on the "bitsandbytes" int4 path "int4" is NF4 at ``int4_blocksize`` instead);
    "bnb-nf4" and "bnb-gemm_4bit" are bitsandbytes nf4 at ``nf4_blocksize``.

    >>> fns = build_paths([torch.randn(32, 64, dtype=torch.bfloat16)], ("bf16", "int4"), int4_blocksize=32)
    >>> fns["int4"][0](torch.randn(1, 64, dtype=torch.bfloat16)).shape
    torch.Size([1, 32])
    """
    paths = default_paths(weights[0].device) if paths is None else paths
    unknown = set(paths) - set(CUDA_PATHS)
    if unknown:
        raise ValueError(f"paths must be among {CUDA_PATHS}; got {sorted(unknown)}")
    out = {}
    for path in paths:
        if path == "bf16":
            out[path] = [lambda x, w=w: F.linear(x, w) for w in weights]
        elif path == "int4" and int4_path(weights[0].device) == "bitsandbytes":
            from .bnb4bit import Bnb4bitLinear

            out[path] = [Bnb4bitLinear(w, blocksize=int4_blocksize) for w in weights]
        elif path in ("int4", "int4-dequant"):
            cls = FusedInt4Linear if path == "int4" else DequantInt4Linear
            out[path] = [cls(quantize_int4(w, int4_blocksize)) for w in weights]
        elif path == "int8":
            out[path] = [FusedInt8Linear(w) for w in weights]
        else:
            out[path] = _bnb_paths(weights, path, nf4_blocksize)
    return out


def _bnb_paths(weights, path: str, blocksize: int) -> list:
    """bitsandbytes nf4 (through `qlearn.bnb_interop`): "bnb-nf4" decodes with ``dequantize_4bit`` then
    ``F.linear``; "bnb-gemm_4bit" calls ``bitsandbytes.matmul_4bit``, what ``Linear4bit.forward`` calls with no
    gradient."""
    states = [bnb_interop.quantize_nf4(w, blocksize) for w in weights]
    if path == "bnb-gemm_4bit":
        return [lambda x, s=s: bnb_interop.matmul_4bit(x, s[0], s[1]) for s in states]
    return [lambda x, s=s: F.linear(x, bnb_interop.dequantize_4bit(s[0], s[1]).to(x.dtype)) for s in states]


def time_layer_paths(fns: dict, in_features: list[int], batch: int = 1, rounds: int = 5,
                     n_threads: int | None = 1, dtype=torch.bfloat16, device=None) -> LayerTimes:
    """Time every path over all its layers (inputs of ``batch`` rows on ``device``, default CPU, each layer's
    own in_features), ``rounds`` alternating rounds after one warm-up; seconds per layer of the fastest round.
    On a CUDA device the clock is read after ``torch.cuda.synchronize`` (every kernel of the round done).

    >>> fns = build_paths([torch.randn(32, 64, dtype=torch.bfloat16)], ("bf16", "int4"), int4_blocksize=32)
    >>> sorted(time_layer_paths(fns, [64], rounds=1).seconds)
    ['bf16', 'int4']
    """
    device = torch.device(device or "cpu")
    gen = torch.Generator().manual_seed(0)
    xs = {k: _on(torch.randn(batch, k, generator=gen).to(dtype), device) for k in set(in_features)}
    inputs = [xs[k] for k in in_features]
    best = {p: float("inf") for p in fns}
    with torch.inference_mode(), threads(n_threads):
        for r in range(rounds + 1):
            for path, layer_fns in fns.items():
                synchronize(device)
                start = time.perf_counter()
                for fn, x in zip(layer_fns, inputs, strict=True):
                    fn(x)
                synchronize(device)
                if r:
                    best[path] = min(best[path], (time.perf_counter() - start) / len(layer_fns))
    return LayerTimes(batch, len(inputs), best, n_threads or torch.get_num_threads())


def _on(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x on ``device`` (the inputs are drawn on the CPU, so every device gets the same numbers)."""
    return x.to(device)
