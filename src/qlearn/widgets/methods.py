"""The methods explorer (lesson 11): pick a layer and a method, see one row before / after, the error
per input column against round-to-nearest, and how far GPTQ's error compensation moved each column."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from ..methods.layer import LAYER_METHODS, quantize_layer, synthetic_layer
from ..methods.rtn import column_error, output_error
from ..plots._base import to_numpy
from ..plots.methods import MethodView
from ._base import _WIDE, Explorer, ResultCache, slider_layout

__all__ = ["MethodExplorer", "method_explorer", "layer_data"]

BLOCKSIZES = (32, 64, 128)   # the blocksize dropdown (columns of a row that share one scale)


def layer_data(model, tok, names, text: str | None = None, max_tokens: int = 256) -> tuple[dict, dict]:
    """({name: weight (out, in) float32}, {name: inputs (tokens, in) float32}) for linear layers `names`
    of a loaded model, inputs captured on the calibration text (not the evaluation text)."""
    from .. import sources
    from ..calibration import calibration_text

    text = text or calibration_text("methods")[:8 * max_tokens]
    weights = {n: sources.layer_weight(model, n) for n in names}
    inputs = {n: sources.layer_inputs(model, tok, n, text, max_tokens=max_tokens) for n in names}
    return weights, inputs


class MethodExplorer(Explorer):
    """Controls: layer, method, blocksize, row. After each update: `record` (the method's record),
    `col_err` / `rtn_col_err` (mean |error| per input column, numpy), `shift` (GPTQ's mean |moved -
    original| per column, else None), `out_err` / `rtn_out_err` (mean squared output error on the inputs)."""

    name = "method_explorer"

    def __init__(self, weights: dict, inputs: dict, layer: str | None = None, method: str = "gptq",
                 blocksize: int = 128, row: int = 0, columns: int = 96, canvas: str = "png"):
        if not weights:
            raise ValueError("weights must name at least one layer: {name: (out, in) tensor}")
        layer = layer or next(iter(weights))
        self.weights, self.inputs, self.columns = weights, inputs, columns
        self.cache = ResultCache(8)
        self._views = ResultCache(8)
        rows = weights[layer].shape[0]
        controls = {
            "layer": widgets.Dropdown(options=list(weights), value=layer, description="layer", style=_WIDE),
            "method": widgets.Dropdown(options=list(LAYER_METHODS), value=method, description="method"),
            "blocksize": widgets.Dropdown(options=list(BLOCKSIZES), value=blocksize, description="blocksize"),
            "row": widgets.IntSlider(value=row, min=0, max=rows - 1, description="row", continuous_update=True,
                                     layout=slider_layout()),
        }
        self.record = self.col_err = self.rtn_col_err = self.shift = None
        super().__init__(controls, MethodView(), title="Beyond round-to-nearest: one layer, one method",
                         canvas=canvas)
        self.update()

    def _result(self, layer: str, method: str, blocksize: int):
        w, x = self.weights[layer].float(), self.inputs.get(layer)
        return self.cache.get_or((layer, method, blocksize), lambda: quantize_layer(method, w, x, blocksize))

    def _layer_view(self, layer: str, method: str, blocksize: int) -> dict:
        """What does not change with the row, for one (layer, method, blocksize): computed once."""
        def compute():
            w, x = self.weights[layer].float(), self.inputs.get(layer)
            rec, moved = self._result(layer, method, blocksize)
            base, _ = self._result(layer, "rtn", blocksize)
            w_hat = rec.dequantize(torch.float32).reshape(w.shape)
            k = min(self.columns, w.shape[1])
            shown = [w[:, :k], w_hat[:, :k]] + ([moved[:, :k]] if moved is not None else [])
            in_scale = getattr(rec, "in_scale", None)
            return dict(
                rec=rec, moved=moved, w_hat=w_hat, k=k, w_range=(min(float(t.min()) for t in shown),
                                                                  max(float(t.max()) for t in shown)),
                col_err=to_numpy(column_error(w, w_hat)), rtn_col_err=to_numpy(column_error(w, base.dequantize())),
                shift=to_numpy(column_error(w, moved)) if moved is not None else None,
                in_scale=to_numpy(in_scale) if in_scale is not None else None,
                out_err=output_error(x, w, w_hat) if x is not None else None,
                rtn_out_err=output_error(x, w, base.dequantize()) if x is not None else None)
        return self._views.get_or((layer, method, blocksize), compute)

    def _draw(self, v: dict) -> None:
        layer, method, blocksize = v["layer"], v["method"], v["blocksize"]
        w = self.weights[layer].float()
        self.controls["row"].max = w.shape[0] - 1
        row = min(v["row"], w.shape[0] - 1)
        d = self._layer_view(layer, method, blocksize)
        self.record, self.col_err, self.rtn_col_err, self.shift = d["rec"], d["col_err"], d["rtn_col_err"], d["shift"]
        self.out_err, self.rtn_out_err = d["out_err"], d["rtn_out_err"]
        k, moved = d["k"], d["moved"]
        ratio = f", output err {self.out_err / self.rtn_out_err:.2f}x RTN" if self.out_err is not None else ""
        self.view.update(np.arange(k), to_numpy(w[row, :k]), to_numpy(d["w_hat"][row, :k]),
                         to_numpy(moved[row, :k]) if moved is not None else None,
                         self.col_err, self.rtn_col_err, self.shift, d["in_scale"],
                         f"{method}, row {row}\n{self.record.bits_per_param:.2f} bits/weight{ratio}", d["w_range"])


def method_explorer(model=None, tok=None, layers=("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"),
                    **kwargs) -> MethodExplorer:
    """The explorer on `layers` of a loaded model (inputs from the calibration text), or, with no
    model, on a seeded synthetic layer (128 x 256, 8 input channels 10x larger)."""
    if model is None:
        w, x = synthetic_layer()
        return MethodExplorer({"synthetic 128x256": w}, {"synthetic 128x256": x}, **kwargs)
    weights, inputs = layer_data(model, tok, list(layers))
    return MethodExplorer(weights, inputs, **kwargs)
