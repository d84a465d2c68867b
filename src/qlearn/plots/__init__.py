"""Pictures of quantization: matplotlib Figures built from tensors and quantization results.

No math here (levels, code usage, histograms, errors come from the math layer: `qlearn.levels`,
`qlearn.codeusage`, `qlearn.distribution`, `qlearn.metrics`, ...) and no widget code (that is
`qlearn.widgets`). Every view class builds its figure once and redraws in place with
`update(...)`; the one-shot functions return a Figure or their artists. Figures use
`matplotlib.figure.Figure` with an Agg canvas (never pyplot's registry); `to_png(fig)` gives the
bytes a notebook shows.
"""

from . import finetune as finetune  # lesson 12's figures (loss curves, memory split, NF4 rounding)
from . import floats, int8, kernels, methods, mixed  # the figures of lessons 04, 06, 09, 11, 10 (by module)
from ._base import new_figure, to_png
from .histograms import QuantHistogramView, ZeroPointView, quantization_histograms
from .memory import DoubleQuantView, format_params
from .models import GenerationView, OutlierView, block_zoom, layer_error_map, model_error_map
from .nf4 import NF4View
from .report import answers_figure, memory_figure, perplexity_figure

__all__ = ["new_figure", "to_png", "QuantHistogramView", "ZeroPointView", "quantization_histograms", "NF4View",
           "DoubleQuantView", "format_params", "GenerationView", "OutlierView", "block_zoom", "layer_error_map",
           "model_error_map", "memory_figure", "perplexity_figure", "answers_figure",
           "floats", "int8", "kernels", "methods", "mixed"]
