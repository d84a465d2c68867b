"""One layer, one method: the weight -> record step every method shares, for the explorer and lesson 11."""

from __future__ import annotations

import torch

from ..formats import FORMATS, names
from .gptq import gptq, hessian

__all__ = ["LAYER_METHODS", "quantize_layer", "synthetic_layer"]

LAYER_METHODS = names("layer")   # rtn, rtn-asym, gptq, awq, hqq, Q4_0, Q4_1, Q4_K


def quantize_layer(method: str, w: torch.Tensor, x: torch.Tensor | None = None, blocksize: int = 128):
    """(record, moved) for weight w (out, in) float32 and calibration inputs x (tokens, in) (GPTQ / AWQ).

    The record is the registry's ``FORMATS[method].quantize(w, blocksize, x)``. moved is GPTQ's float32
    (out, in) "value when rounded" (see `gptq`), else None. GGUF types use their own block sizes
    (blocksize is ignored); Q4_K needs `in` % 256 == 0, else the flattened weight is cut into super-blocks
    (`quantize_gguf_weight`).

    >>> quantize_layer("rtn", torch.tensor([[0.07, 0.034, -0.02, 0.0]]), blocksize=4)[0].codes.tolist()
    [[7, 3, -2, 0]]
    """
    if method not in LAYER_METHODS:
        raise ValueError(f"method must be one of {', '.join(LAYER_METHODS)}; got {method!r}")
    if method == "gptq":
        if x is None:
            raise ValueError(f"method {method!r} needs calibration inputs x (tokens, in)")
        return gptq(w, hessian(x), blocksize=blocksize, return_moved=True)
    return FORMATS[method].quantize(w, blocksize, x), None


def synthetic_layer(out_features: int = 128, in_features: int = 256, seed: int = 0,
                    tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded weight (out, in) float32 of std 0.02 and calibration inputs (tokens, in) shaped like an LLM
    layer's: correlated channels (a rank-8 shared part) and 8 channels 10x larger than the rest.

    >>> w, x = synthetic_layer(4, 32); (w.shape, x.shape)
    (torch.Size([4, 32]), torch.Size([512, 32]))
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.02
    scale = torch.ones(in_features)
    scale[torch.randperm(in_features, generator=g)[:8]] = 10.0
    x = torch.randn(tokens, in_features, generator=g) + torch.randn(tokens, 8, generator=g) @ torch.randn(
        8, in_features, generator=g)
    return w, x * scale
