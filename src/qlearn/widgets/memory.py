"""The double-quant explorer: bytes of codes, absmax and nested state against blocksize and
model size. Bits per parameter come from `qlearn.memory.bits_per_param`; the split into codes /
absmax / nested comes from `Quantized4bit.nbytes_by_part` of a real quantization (2**20 values)."""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as widgets

from .. import memory, plots, sources
from ..quantize import BLOCKSIZES_4BIT, quantize_4bit
from ._base import _WIDE, Explorer, slider_layout

__all__ = ["DoubleQuantExplorer", "double_quant_explorer", "MODEL_SIZES"]

MODEL_SIZES = (135e6, 1e9, 7e9, 13e9, 33e9, 65e9, 70e9)


@lru_cache(maxsize=2)
def _bytes_per_param(quant_type: str) -> dict:
    """{(blocksize, double_quant): {"codes", "absmax", "nested"} bytes per parameter}, measured
    on 2**20 values (a whole number of blocks and of nested blocks at every blocksize)."""
    x = sources.synthetic("normal", 2 ** 20, seed=0)
    parts = {(bs, dq): quantize_4bit(x, quant_type, bs, double_quant=dq).nbytes_by_part
             for bs in BLOCKSIZES_4BIT for dq in (False, True)}
    return {key: {k: v / x.numel() for k, v in part.items()} for key, part in parts.items()}


class DoubleQuantExplorer(Explorer):
    """Controls: blocksize, model_size. After each update: `saving_bits` (= the difference of
    `ql.memory.bits_per_param` without and with double quant) and `saving_gb`."""

    name = "double_quant_explorer"

    def __init__(self, blocksize: int = 64, model_size: float = 7e9, quant_type: str = "nf4",
                 canvas: str = "png"):
        sizes = list(MODEL_SIZES) if model_size in MODEL_SIZES else sorted({*MODEL_SIZES, float(model_size)})
        controls = {
            "blocksize": widgets.SelectionSlider(options=list(BLOCKSIZES_4BIT), value=blocksize,
                                                 description="blocksize", continuous_update=True,
                                                 style=_WIDE, layout=slider_layout("280px")),
            "model_size": widgets.SelectionSlider(options=[(plots.format_params(n), n) for n in sizes],
                                                  value=model_size, description="model size",
                                                  continuous_update=True, style=_WIDE,
                                                  layout=slider_layout("280px")),
        }
        self.quant_type, self.sizes = quant_type, sizes
        self.bpp = {dq: [memory.bits_per_param(quant_type + ("+dq" if dq else ""), bs) for bs in BLOCKSIZES_4BIT]
                    for dq in (False, True)}
        self.saving_bits = self.saving_gb = None
        super().__init__(controls, plots.DoubleQuantView(), title="Double quantization: what the scales cost",
                         canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        split = _bytes_per_param(self.quant_type)
        self.view.update(list(BLOCKSIZES_4BIT), split, self.bpp, v["blocksize"], v["model_size"], self.sizes)
        self.saving_bits, self.saving_gb = self.view.saving_bits, self.view.saving_gb


def double_quant_explorer(**kwargs) -> DoubleQuantExplorer:
    """Explore double-quant savings; kwargs: blocksize=64, model_size=7e9, quant_type="nf4".

    >>> w = double_quant_explorer(blocksize=64)
    >>> round(w.saving_bits, 6)
    0.373047
    """
    return DoubleQuantExplorer(**kwargs)
