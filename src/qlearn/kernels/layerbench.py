"""One linear layer, several ways: the same weights multiplied by bf16 ``F.linear``, dequantize-then-matmul
(qlearn's int4 decode or bitsandbytes' ``dequantize_4bit``) and the fused int4 / int8 kernels, timed
side by side on every layer of a model in turn ("cycled"), so no layer's weights sit in the cache.

Rounds alternate the paths (path A over all layers, then B, ...), and each path keeps its fastest round:
a burst of load on a shared machine hits every path alike, and the fastest round is the least disturbed.
bitsandbytes is imported only for the "bnb-nf4" path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fused import DequantInt4Linear, FusedInt4Linear, FusedInt8Linear, quantize_int4
from .timesplit import threads

__all__ = ["PATHS", "LayerTimes", "build_paths", "time_layer_paths"]

PATHS = ("bf16", "int4-dequant", "bnb-nf4", "int4", "int8")


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


def build_paths(weights: list[torch.Tensor], paths=PATHS, groupsize: int = 64, blocksize: int = 64) -> dict:
    """{path: [callable(x) per layer]} for (N, K) bf16 weights. "int4" and "int4-dequant" share the same
    int4 codes (asymmetric, ``groupsize``); "bnb-nf4" is bitsandbytes nf4 at ``blocksize``.

    >>> fns = build_paths([torch.randn(32, 64, dtype=torch.bfloat16)], ("bf16", "int4"), groupsize=32)
    >>> fns["int4"][0](torch.randn(1, 64, dtype=torch.bfloat16)).shape
    torch.Size([1, 32])
    """
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"paths must be among {PATHS}; got {sorted(unknown)}")
    out = {}
    for path in paths:
        if path == "bf16":
            out[path] = [lambda x, w=w: F.linear(x, w) for w in weights]
        elif path in ("int4", "int4-dequant"):
            cls = FusedInt4Linear if path == "int4" else DequantInt4Linear
            out[path] = [cls(quantize_int4(w, groupsize)) for w in weights]
        elif path == "int8":
            out[path] = [FusedInt8Linear(w) for w in weights]
        else:
            import bitsandbytes.functional as bnbf

            states = [bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4") for w in weights]
            out[path] = [lambda x, s=s: F.linear(x, bnbf.dequantize_4bit(s[0], s[1]).to(x.dtype)) for s in states]
    return out


def time_layer_paths(fns: dict, in_features: list[int], batch: int = 1, rounds: int = 5,
                     n_threads: int | None = 1, dtype=torch.bfloat16) -> LayerTimes:
    """Time every path over all its layers (inputs of ``batch`` rows, each layer's own in_features),
    ``rounds`` alternating rounds after one warm-up; seconds per layer of the fastest round.

    >>> fns = build_paths([torch.randn(32, 64, dtype=torch.bfloat16)], ("bf16", "int4"), groupsize=32)
    >>> sorted(time_layer_paths(fns, [64], rounds=1).seconds)
    ['bf16', 'int4']
    """
    gen = torch.Generator().manual_seed(0)
    xs = {k: torch.randn(batch, k, generator=gen).to(dtype) for k in set(in_features)}
    inputs = [xs[k] for k in in_features]
    best = {p: float("inf") for p in fns}
    with torch.inference_mode(), threads(n_threads):
        for r in range(rounds + 1):
            for path, layer_fns in fns.items():
                start = time.perf_counter()
                for fn, x in zip(layer_fns, inputs, strict=True):
                    fn(x)
                if r:
                    best[path] = min(best[path], (time.perf_counter() - start) / len(layer_fns))
    return LayerTimes(batch, len(inputs), best, n_threads or torch.get_num_threads())
