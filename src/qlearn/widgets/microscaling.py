"""The block-format explorer (lesson 14): one window of 32 real weights under MXFP4, NVFP4, NF4 and int4,
the levels each weight's block allows, and the error per weight. Every layer is quantized once, when
first shown (qlearn.matched4bit); moving a slider only slices."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from ..matched4bit import FORMATS, grids
from ..plots._base import to_numpy
from ..plots.microscaling import BlockGridView
from ._base import _WIDE, Explorer, ResultCache, slider_layout

__all__ = ["BlockFormatExplorer", "block_format_explorer"]

WINDOW = 32   # one MXFP4 block, two NVFP4 blocks, half an NF4 / int4 block


class BlockFormatExplorer(Explorer):
    """Controls: layer, row, window (which 32 weights of the row), grid (whose levels are drawn).
    After each update: `window_error` {format: sum of squared error over the window} and `largest`
    {format: the largest level of each block in the window (floats): 6 x scale for MXFP4 / NVFP4, the
    absmax for NF4, 7 x scale for int4}."""

    name = "block_format_explorer"

    def __init__(self, weights: dict, layer: str | None = None, row: int = 0, window: int = 0,
                 grid: str = "MXFP4", canvas: str = "png"):
        if not weights:
            raise ValueError("weights must name at least one layer: {name: (out, in) tensor}")
        layer = layer or next(iter(weights))
        self.weights = {k: v.detach().float() for k, v in weights.items()}
        self.cache = ResultCache(4)
        out, inp = self.weights[layer].shape
        controls = {
            "layer": widgets.Dropdown(options=list(weights), value=layer, description="layer", style=_WIDE),
            "row": widgets.IntSlider(value=row, min=0, max=out - 1, description="row", continuous_update=True,
                                     layout=slider_layout()),
            "window": widgets.IntSlider(value=window, min=0, max=inp // WINDOW - 1, description="window",
                                        continuous_update=True, layout=slider_layout()),
            "grid": widgets.Dropdown(options=list(FORMATS), value=grid, description="levels of"),
        }
        self.window_error, self.largest = {}, {}
        super().__init__(controls, BlockGridView(FORMATS), title="Four 4-bit formats on the same 32 weights",
                         canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        w = self.weights[v["layer"]]
        g, whole = self.cache.get_or(v["layer"], lambda: _grids_and_values(w))   # once per layer
        self.controls["row"].max = w.shape[0] - 1
        self.controls["window"].max = w.shape[1] // WINDOW - 1
        row, start = min(v["row"], w.shape[0] - 1), min(v["window"], w.shape[1] // WINDOW - 1) * WINDOW
        cols = slice(start, start + WINDOW)
        deq = {f: whole[f][row, cols] for f in FORMATS}
        x = w[row, cols]
        self.window_error = {f: float(((deq[f] - x) ** 2).sum()) for f in FORMATS}
        self.largest = {f: sorted(set((g[f].scale[row, cols] * g[f].codebook.abs().max()).tolist())) for f in FORMATS}
        levels = _window_levels(g[v["grid"]], row, cols)
        size = g[v["grid"]].blocksize
        bounds = [i for i in range(1, WINDOW) if (start + i) % size == 0]
        best = min(FORMATS, key=self.window_error.get)
        # the layer's line stays the same as the sliders move (the text cache draws it again at once)
        title = f"{v['layer']}\nrow {row}, weights {start}..{start + WINDOW - 1}: smallest error {best}"
        self.view.update(to_numpy(x), {f: to_numpy(d) for f, d in deq.items()}, levels, v["grid"], title, bounds,
                         largest=self.largest)


def _window_levels(grid, row: int, cols: slice) -> np.ndarray:
    """(WINDOW, k): row i the levels weight i of the window may take (`Grid.levels` of each weight, all at once):
    the code book times the weight's scale, sorted, a level repeated in a row (+0 and -0) left as NaN."""
    levels = np.sort(to_numpy(grid.scale[row, cols])[:, None] * to_numpy(grid.codebook)[None, :], axis=1)
    levels[:, 1:][np.diff(levels, axis=1) == 0] = np.nan
    return levels


def _grids_and_values(w: torch.Tensor) -> tuple[dict, dict]:
    """The four formats' grids of a layer and their dequantized weights (a slider move only slices them)."""
    g = grids(w)
    return g, {f: g[f].dequantize() for f in FORMATS}


def block_format_explorer(model=None, layers=("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"),
                          **kwargs) -> BlockFormatExplorer:
    """The explorer on `layers` of a loaded model, or, with no model, on a seeded heavy-tailed 64 x 576
    weight (Student's t, 3 degrees of freedom)."""
    if model is None:
        g = torch.Generator().manual_seed(0)
        z, chi2 = torch.randn(64, 576, generator=g), (torch.randn(3, 64, 576, generator=g) ** 2).sum(0)
        w = 0.02 * z / (chi2 / 3).sqrt()                  # Student's t with 3 degrees of freedom
        return BlockFormatExplorer({"synthetic 64x576": w}, **kwargs)
    modules = dict(model.named_modules())
    return BlockFormatExplorer({n: modules[n].weight.detach().float() for n in layers}, **kwargs)
