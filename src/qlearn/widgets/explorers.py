"""Explorers for weights: histogram with levels, NF4 bins, absmax vs zero-point.

Each explorer wires core ipywidgets controls to the math layer (qlearn.quantize, qlearn.metrics)
and a view from qlearn.plots; no math of its own. Results are cached per parameter set, so
moving a slider back and forth only redraws.
"""

from __future__ import annotations

import ipywidgets as widgets

from .. import codebooks, plots, sources
from ..codeusage import entropy_bits
from ..formats import FORMATS, names
from ..granularity import GRANULARITIES, n_groups
from ..levels import levels_of
from ..metrics import error_stats
from ..quantize import BLOCKSIZES_4BIT, absmax_quantize, quantize_4bit, zeropoint_quantize
from ._base import _WIDE, Explorer, ResultCache, SourceControls, slider_layout

__all__ = ["HistogramExplorer", "NF4Explorer", "ZeroPointExplorer", "histogram_explorer", "nf4_explorer",
           "zeropoint_explorer", "SCHEMES", "GRANULARITY_OPTIONS"]

# (label, name) dropdown options: the registry's "scheme" formats and qlearn.granularity's granularities
SCHEMES = tuple((FORMATS[n].label, n) for n in names("scheme"))   # absmax, zero-point, NF4, FP4
GRANULARITY_OPTIONS = tuple((f"per {g}", g) for g in GRANULARITIES)   # per tensor, per row, per block


def _bits_slider(value: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=value, min=2, max=8, step=1, description="bits", continuous_update=True,
                             style=_WIDE, layout=slider_layout("200px"))


def _blocksize_slider(value: int) -> widgets.SelectionSlider:
    return widgets.SelectionSlider(options=list(BLOCKSIZES_4BIT), value=value, description="blocksize",
                                   continuous_update=True, style=_WIDE, layout=slider_layout("250px"))


def quantize_scheme(x, scheme: str, bits: int, granularity: str, blocksize: int):
    """Dispatch to the qlearn quantizer for a scheme name (no math here: it picks the call)."""
    if scheme in ("nf4", "fp4"):
        return quantize_4bit(x, scheme, blocksize=blocksize)
    fn = absmax_quantize if scheme == "absmax" else zeropoint_quantize
    if granularity == "row":
        if x.dim() != 2:
            raise ValueError(f"per-row scales need a 2-D weight; this tensor has shape {tuple(x.shape)}. "
                             "Choose per tensor or per block.")
        return fn(x, bits, axis=0)
    return fn(x, bits, blocksize=blocksize if granularity == "block" else None)


class HistogramExplorer(Explorer):
    """Weight histogram with the scheme's levels, original vs dequantized, and the error.

    Controls: source or layer, scheme, bits (absmax / zero-point), granularity, blocksize,
    group (which block or row panel (a) shows), log. After each update: `result` (the
    quantization), `stats` (ql.error_stats), `levels` (the levels drawn in panel (a)).
    """

    name = "histogram_explorer"

    def __init__(self, source=None, scheme: str = "absmax", bits: int = 4, granularity: str = "block",
                 blocksize: int = 64, n: int = 65536, layer: str | None = None, canvas: str = "png"):
        self.src = SourceControls(source, n=n, layer=layer)
        controls = {
            **self.src.controls,
            "scheme": widgets.Dropdown(options=SCHEMES, value=scheme, description="scheme",
                                       layout=slider_layout("170px")),
            "bits": _bits_slider(bits),
            "granularity": widgets.Dropdown(options=GRANULARITY_OPTIONS, value=granularity, description="scales",
                                            layout=slider_layout("180px")),
            "blocksize": _blocksize_slider(blocksize),
            "group": widgets.IntSlider(value=0, min=0, max=0, description="block / row", style=_WIDE,
                                       continuous_update=True, layout=slider_layout("260px")),
            "log": widgets.Checkbox(value=False, description="log counts", indent=False,
                                    layout=slider_layout("110px")),
        }
        self._results = ResultCache(8)
        self.result = self.stats = self.levels = None
        super().__init__(controls, plots.QuantHistogramView(), title="Weights, levels and error",
                         canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        c = self.controls
        x = self.src.tensor(v)
        four = v["scheme"] in ("nf4", "fp4")
        c["bits"].disabled = c["granularity"].disabled = four
        c["blocksize"].disabled = not four and v["granularity"] != "block"
        bits, granularity = (4, "block") if four else (v["bits"], v["granularity"])
        key = (self.src.key(v), v["scheme"], bits, granularity, v["blocksize"])

        def compute():
            result = quantize_scheme(x, v["scheme"], bits, granularity, v["blocksize"])
            x_hat = result.dequantize()
            return result, x_hat, error_stats(x, x_hat)

        self.result, x_hat, self.stats = self._results.get_or(key, compute)
        c["group"].max = n_groups(self.result) - 1      # clamps the value if it was beyond
        c["group"].disabled = c["group"].max == 0
        self.view.update(x, self.result, group=c["group"].value, log=v["log"], stats=self.stats, x_hat=x_hat)
        self.levels = levels_of(self.result, c["group"].value)


class NF4Explorer(Explorer):
    """Where NF4's 16 values come from, a tensor's block-normalized values with the NF4 bins, and
    how evenly NF4 / INT4 / FP4 use their levels. Controls: source or layer, blocksize, offset.
    After each update: `shares` {name: (levels, share)}, `entropy` {name: bits}."""

    name = "nf4_explorer"

    def __init__(self, source=None, blocksize: int = 64, offset: float = codebooks.NF4_OFFSET,
                 n: int = 65536, layer: str | None = None, canvas: str = "png"):
        self.src = SourceControls(source, n=n, layer=layer)
        controls = {
            **self.src.controls,
            "blocksize": _blocksize_slider(blocksize),
            "offset": widgets.FloatSlider(value=offset, min=0.9, max=0.995, step=0.0005, readout_format=".4f",
                                          description="offset (top quantile)", continuous_update=True,
                                          style=_WIDE, layout=slider_layout("330px")),
        }
        self._results = ResultCache(6)
        self.shares, self.entropy = {}, {}
        super().__init__(controls, plots.NF4View(), title="NF4: normal quantiles as levels", canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        x = self.src.tensor(v)
        bs = v["blocksize"]
        results = self._results.get_or((self.src.key(v), bs), lambda: {   # nf4, int4 (absmax), fp4 at bs
            name: FORMATS[name].quantize(x, bs) for name in plots.NF4View.COMPARED})
        self.view.update(x, results, offset=v["offset"])
        self.shares = self.view.shares
        self.entropy = {k: entropy_bits(s) for k, (_, s) in self.shares.items()}


class ZeroPointExplorer(Explorer):
    """Absmax vs zero-point on a skewed or shifted tensor (per-tensor scales): levels used,
    rounding error per value, SQNR against bits 2..8. Controls: source or layer, shift (in
    standard deviations), bits. After each update: `used` {scheme: (used, total)}, `sqnr`."""

    name = "zeropoint_explorer"

    def __init__(self, source=None, bits: int = 4, shift: float = 0.0, n: int = 65536,
                 layer: str | None = None, canvas: str = "png"):
        self.src = SourceControls(source, default="skewed", n=n, layer=layer)
        controls = {
            **self.src.controls,
            "shift": widgets.FloatSlider(value=shift, min=-3.0, max=3.0, step=0.25, description="shift (std)",
                                         continuous_update=True, style=_WIDE, layout=slider_layout("260px")),
            "bits": _bits_slider(bits),
        }
        self._results = ResultCache(16)      # ~1.3 MB a shift (65,536 values): a shift dragged back is kept
        self.used, self.sqnr = {}, {}
        super().__init__(controls, plots.ZeroPointView(), title="Absmax vs zero-point", canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        key = (self.src.key(v), v["shift"])

        def compute():
            x = sources.shifted(self.src.tensor(v), v["shift"])
            per_bits = {b: {"absmax": absmax_quantize(x, b), "zeropoint": zeropoint_quantize(x, b)}
                        for b in range(2, 9)}
            sqnr = {name: [error_stats(x, per_bits[b][name].dequantize())["sqnr_db"] for b in range(2, 9)]
                    for name in ("absmax", "zeropoint")}
            return x, per_bits, sqnr

        x, per_bits, self.sqnr = self._results.get_or(key, compute)
        self.view.update(x, per_bits[v["bits"]], self.sqnr, v["bits"])
        self.used = dict(self.view.used)


def histogram_explorer(source=None, **kwargs) -> HistogramExplorer:
    """Explore a weight histogram under absmax / zero-point / NF4 / FP4.

    source: None (synthetic samples to pick from), a tensor, a dict of tensors, or a model
    (pick a linear layer by name). Keyword arguments set the starting values: scheme="absmax",
    bits=4, granularity="block" ("tensor", "row"), blocksize=64, n=65536, layer=None.

    >>> w = histogram_explorer(scheme="zeropoint", bits=3)
    >>> len(w.levels)
    8
    """
    return HistogramExplorer(source, **kwargs)


def nf4_explorer(source=None, **kwargs) -> NF4Explorer:
    """Explore NF4's construction and bin occupancy; kwargs: blocksize=64, offset=0.9677083, n, layer.

    >>> w = nf4_explorer()
    >>> w.entropy["nf4"] > w.entropy["int4"]
    True
    """
    return NF4Explorer(source, **kwargs)


def zeropoint_explorer(source=None, **kwargs) -> ZeroPointExplorer:
    """Explore absmax vs zero-point on a skewed tensor; kwargs: bits=4, shift=0.0, n, layer.

    >>> w = zeropoint_explorer(bits=4)
    >>> w.used["zeropoint"][0] > w.used["absmax"][0]
    True
    """
    return ZeroPointExplorer(source, **kwargs)
